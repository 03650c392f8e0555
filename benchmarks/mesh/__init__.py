"""The mesh benchmark: a client pod and a server pod in network namespaces, each with its
sidecar, the bpf-sidecar side by side with nginx and HAProxy as sidecars
(`python -m benchmarks.mesh`; run.py says how it works)."""
