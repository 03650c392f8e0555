"""bpf-sidecar: the Python management layer (config, loader, manager, workers, CLI)."""
