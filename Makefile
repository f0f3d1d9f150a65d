# Two commands do all the set-up on a fresh machine: `make test` and `make bench`.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
TORCH   ?= torch==2.14.1
STAMP   := $(VENV)/.deps-stamp
BUILT   := $(VENV)/.build-stamp
SOURCES := $(shell find csrc -type f) setup.py pyproject.toml

.PHONY: test bench build install dist test-gpu bench-gpu test-integration test-cross clean

$(STAMP):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(TORCH)" pytest hypothesis ninja numpy setuptools wheel expecttest matplotlib \
		ruff==0.17.6
	touch $@

$(BUILT): $(STAMP) $(SOURCES)
	$(VPY) -m pip install -q --no-build-isolation -e .
	touch $@

install build: $(BUILT)

test: $(BUILT)
	$(VPY) -m ruff check .
	$(VPY) -m pytest -q tests

# The bench's peers, where they install next to the pinned torch (naming it too makes pip fail
# rather than move it): FBGEMM's CPU table-batched embedding (bench/workloads_fbgemm.py);
# bitsandbytes' CPU 8-bit AdamW, torchao's 8-bit AdamW and stochastic rounding, torch-optimi's
# Kahan summation (bench/workloads_mixed.py).
BENCH_PEERS := fbgemm-gpu-cpu==1.9.0 bitsandbytes==0.50.2 torchao==0.18.0 torch-optimi==0.3.3
bench: $(BUILT)
	$(VPY) -m pip install -q $(BENCH_PEERS) "$(TORCH)"
	$(VPY) -m bench

# pyoptim inside Lightning and Hugging Face's Trainer (tests/integration, left out of `make
# test`): the frameworks at pinned versions, installed next to the pinned torch (naming it too
# makes pip fail rather than move it), then only their tests.
INTEGRATION := lightning==2.6.6 transformers==5.24.0 accelerate==1.15.0
test-integration: $(BUILT)
	$(VPY) -m pip install -q $(INTEGRATION) "$(TORCH)"
	PYOPTIM_INTEGRATION=1 $(VPY) -m pytest -q tests/integration

# The AArch64 NEON kernels against the scalar ones, bit for bit, torch-free, on any machine:
# cross-compiled with aarch64-linux-gnu-g++ and run under qemu-aarch64 (tools/cross_test.sh; apt
# packages g++-aarch64-linux-gnu and qemu-user). No venv needed.
test-cross:
	tools/cross_test.sh

# sdist + wheel, each proven away from this checkout (tools/dist.py): the wheel is built from the
# sdist in a fresh venv, then installed into another fresh venv and smoke-tested outside the tree.
dist: $(STAMP)
	$(VPY) tools/dist.py --torch "$(TORCH)"

# On a GPU machine (see README): the CUDA tests (with every GPU bench workload at tiny sizes) and
# the GPU benchmark (python -m bench --device cuda). The build compiles the CUDA kernels when nvcc
# is found (setup.py: PYOPTIM_CUDA=auto; PYOPTIM_CUDA=1 makes it an error not to). test-gpu fails
# rather than skips when no GPU is visible.
# Toolchain: build with a g++ that links libstdc++ dynamically, as torch does. The lent H100
# image sets CC/CXX=/opt/gcc/bin/g*, whose link embeds a static libstdc++ in _C.so; there the
# first C++ error message built in the extension segfaulted (std::ostream in a second copy of
# libstdc++). `CC=gcc CXX=g++ LDSHARED="gcc -shared" LDCXXSHARED="g++ -shared"` fixed it.
test-gpu: $(BUILT)
	$(VPY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'make test-gpu: no CUDA GPU visible')"
	$(VPY) -m pytest -q tests/test_cuda.py tests/test_cuda_mixed.py tests/test_cuda_sgd_modes.py \
		tests/test_cuda_sgd_sparse.py \
		tests/test_duplicate_order.py \
		tests/test_step_atomic.py tests/test_bench_smoke.py::test_cuda_quick_run_every_workload

bench-gpu: $(BUILT)
	$(VPY) -m bench --device cuda

clean:
	rm -rf build dist *.egg-info pyoptim/*.so $(BUILT)
