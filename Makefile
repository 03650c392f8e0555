# The two commands a user needs: `make demo` and `make test` (both as root on Debian 12).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo bench bench-quick bench-mesh bench-management bench-policy bench-cache bench-datapath clean

setup:
	@scripts/setup-host.sh

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/sidecar demo $(DEMO_ARGS)

# The reverse-proxy benchmark (loopback), the mesh benchmark (two pods in network
# namespaces, needs root) and the management-layer benchmark.
bench: setup
	$(PY) -m benchmarks.run $(BENCH_ARGS)
	$(PY) -m benchmarks.mesh $(MESH_ARGS)
	$(PY) -m benchmarks.management
	$(PY) -m benchmarks.loader
	$(PY) -m benchmarks.policy
	$(PY) -m benchmarks.kernel_counters
	$(PY) -m benchmarks.cache
	$(PY) -m benchmarks.kernel_datapath

bench-mesh: setup
	$(PY) -m benchmarks.mesh $(MESH_ARGS)

bench-datapath: setup
	$(PY) -m benchmarks.kernel_datapath $(DATAPATH_ARGS)

bench-management: setup
	$(PY) -m benchmarks.management $(BENCH_ARGS)

bench-policy: setup
	$(PY) -m benchmarks.policy $(BENCH_ARGS)

bench-cache: setup
	$(PY) -m benchmarks.cache $(BENCH_ARGS)

bench-quick: setup
	$(PY) -m benchmarks.run --quick
	$(PY) -m benchmarks.mesh --quick

clean:
	rm -rf build fastpath/*.c fastpath/*.so fastpath/*.html
