# The CUDA tests (included by the Makefile). With nvcc present, `make check`
# compiles mlkern_cuda.cuh and every tests/cuda/test_*.cu for sm_80 and sm_90
# (warnings as errors, ptxas -v kept per test) and builds each test for the
# host emulator (tests/cuda/simt.h, g++ on the same source); tests/check.sh
# runs the emulated tests and the spill check. Without nvcc nothing here is
# built and check.sh says the CUDA tests were skipped.
# `make cuda-check` / `make cuda-bench` run on a GPU (tests/cuda/gpu_check.sh).
NVCC       ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_ARCHS ?= 80 90
CUDA_TESTS  = $(patsubst tests/cuda/%.cu,%,$(wildcard tests/cuda/test_*.cu))
# (tests/cuda/*.cuh: parts of mlkern_cuda.cuh still written beside it)
CUDA_HDRS   = mlkern.h mlkern_cuda.cuh tests/mlkt.h tests/attn_ref.h tests/cuda/mlkct.h tests/cuda/simt.h $(wildcard tests/cuda/*.cuh)
# the CUDA headers for the emulator build: where nvcc itself looks (nvcc may
# be a wrapper script outside the toolkit, so not relative to its path)
ifndef CUDA_INC
CUDA_INC   := $(shell $(NVCC) --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/.*INCLUDES="-I\([^"]*\)".*/\1/p' | head -n 1)
endif
# nvcc: device and host code warning-free; -Xptxas -v reports registers,
# spills and shared memory of every kernel (tests/cuda/ptxas_check.sh reads it)
CFG_nvcc    = $(NVCC) -std=c++17 -O3 -Werror all-warnings -Xcompiler -Wall,-Wextra -Xptxas -v
# the emulator: the CUDA headers' host code plus simt.h; device code
# type-puns through vector loads, as CUDA code does, hence no strict aliasing;
# unrolling hints are for nvcc (g++ ignores them, clang++ may fail to honour them)
EMU_CLANG   = $(if $(findstring clang,$(shell $(CXX) --version 2>/dev/null | head -n 1)),-Wno-pass-failed)
CFG_emu     = $(CXX) -std=c++17 -O1 -fno-strict-aliasing -Wall -Wextra -Werror -Wno-unknown-pragmas $(EMU_CLANG) \
              -DMLKCT_EMULATE -isystem $(CUDA_INC)

.PHONY: cuda-tests cuda-check cuda-bench

ifneq ($(NVCC),)
# per architecture: the implementation once, then each test linked to it
# (a test that defines MLKCT_HEADER_IMPL compiles the implementation itself)
define cuda_arch_rules
build/cuda/sm$(1)/mlkern_cuda_impl.o: tests/cuda/mlkern_cuda_impl.cu mlkern.h mlkern_cuda.cuh
	@mkdir -p build/cuda/sm$(1)
	$$(CFG_nvcc) -arch=sm_$(1) -I. -c -o $$@ $$< 2> $$@.ptxas || { cat $$@.ptxas; rm -f $$@; exit 1; }
build/cuda/sm$(1)/%: tests/cuda/%.cu $(CUDA_HDRS) build/cuda/sm$(1)/mlkern_cuda_impl.o
	$$(CFG_nvcc) -arch=sm_$(1) -I. -Itests -Itests/cuda -o $$@ $$< \
	    $$(if $$(shell grep -l MLKCT_HEADER_IMPL $$<),,build/cuda/sm$(1)/mlkern_cuda_impl.o) 2> $$@.ptxas \
	    || { cat $$@.ptxas; rm -f $$@; exit 1; }
endef
$(foreach a,$(CUDA_ARCHS),$(eval $(call cuda_arch_rules,$(a))))

build/cuda/emu/%: tests/cuda/%.cu $(CUDA_HDRS)
	@mkdir -p build/cuda/emu
	$(CFG_emu) -I. -Itests -Itests/cuda -x c++ -o $@ $< -lm

cuda-tests: $(addprefix build/cuda/emu/,$(CUDA_TESTS)) \
            $(foreach a,$(CUDA_ARCHS),$(addprefix build/cuda/sm$(a)/,$(CUDA_TESTS))) \
            build/cuda/sm$(firstword $(CUDA_ARCHS))/bench_cuda
tests: cuda-tests
endif

cuda-check:
	@sh tests/cuda/gpu_check.sh check

cuda-bench:
	@sh tests/cuda/gpu_check.sh bench
