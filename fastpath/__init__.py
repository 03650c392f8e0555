"""bpf-sidecar hot path, in Cython: HTTP/1.1 parser, proxy protocols, policy decisions."""
