# mlkern - `make` builds and runs the examples, `make check` runs every test
# configuration, `make bench` / `make bench-peers` measure.
CC      ?= gcc
CXX     ?= g++
CLANG   ?= clang
NATIVE  ?= -march=native
WARN     = -Wall -Wextra -Wpedantic -Werror
HDRS     = mlkern.h $(wildcard examples/*.h) tests/mlkt.h tests/attn_ref.h tests/fuzz_input.h
TESTS    = $(patsubst tests/%.c,%,$(wildcard tests/test_*.c))
EXAMPLES = $(patsubst examples/%.c,%,$(wildcard examples/*.c))
BENCHES  = $(patsubst bench/%.c,%,$(wildcard bench/bench_*.c))

# One line per test configuration: the same sources, compiled each way.
CFG_c99    = $(CC) -std=c99 -O2 $(NATIVE) $(WARN)
CFG_asan   = $(CLANG) -std=c99 -O1 -g $(NATIVE) -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -DMLKT_QUICK $(WARN)
CFG_omp    = $(CC) -std=c99 -O3 $(NATIVE) -fopenmp $(WARN)
CFG_nosimd = $(CC) -std=c99 -O2 -DMLKERN_NO_SIMD $(WARN)
CFG_cxx    = $(CXX) -x c++ -std=c++11 -O2 $(NATIVE) -Wall -Wextra -Werror
CFG_static = $(CC) -std=c99 -O2 $(NATIVE) -DMLKERN_STATIC -DMLKT_TWO_TU $(WARN)
CONFIGS  = c99 asan omp nosimd cxx static

.PHONY: all examples check check-valgrind tests bench bench-peers fuzz clean install uninstall plots
all: examples

define cfg_rules
build/$(1)/%: tests/%.c $(HDRS) $(if $(filter static,$(1)),tests/second_tu.c)
	@mkdir -p build/$(1)
	$$(CFG_$(1)) -Itests -I. -o $$@ $$< $(if $(filter static,$(1)),-x c tests/second_tu.c) -lm
endef
$(foreach c,$(CONFIGS),$(eval $(call cfg_rules,$(c))))

tests: $(foreach c,$(CONFIGS),$(addprefix build/$(c)/,$(TESTS)))

check: tests
	@sh tests/check.sh "$(CONFIGS)" "$(TESTS)"

build/examples/%: examples/%.c $(HDRS)
	@mkdir -p build/examples
	$(CC) -std=c99 -O3 $(NATIVE) -fopenmp -Wall -Wextra -I. -o $@ $< -lm

examples: $(addprefix build/examples/,$(EXAMPLES))
	@for e in $(EXAMPLES); do echo "== examples/$$e"; ./build/examples/$$e || exit 1; done

build/bench/%: bench/%.c bench/bench.h $(HDRS)
	@mkdir -p build/bench
	$(CC) -std=c99 -O3 $(NATIVE) -fopenmp -Wall -Wextra -I. -Ibench -o $@ $< -lm

bench: $(addprefix build/bench/,$(BENCHES))
	@mkdir -p build
	@rm -f build/bench.csv
	@for b in $(BENCHES); do OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} ./build/bench/$$b || exit 1; done

bench-peers: bench
	@sh bench/peers.sh

clean:
	rm -rf build

# libFuzzer targets: tests/fuzz_*.c, built with clang -fsanitize=fuzzer,address.
build/fuzz/%: tests/%.c $(HDRS)
	@mkdir -p build/fuzz
	$(CLANG) -std=c99 -O1 -g -fsanitize=fuzzer,address,undefined -I. -Itests -o $@ $< -lm

FUZZERS = $(patsubst tests/%.c,%,$(wildcard tests/fuzz_*.c))

# make fuzz: every target for FUZZ_SECONDS each (default 60) from its
# corpus; make check runs each for a few seconds.
fuzz:
	@failed=0; for f in $(FUZZERS); do echo "[fuzz] $$f, $${FUZZ_SECONDS:-60} s"; \
	    FUZZ_SECONDS=$${FUZZ_SECONDS:-60} sh tests/fuzz_run.sh $$f; rc=$$?; \
	    if [ $$rc -eq 77 ]; then exit 77; fi; [ $$rc -eq 0 ] || failed=$$((failed + 1)); \
	done; echo "fuzz: $$failed failed"; [ $$failed -eq 0 ]

# make check-valgrind: valgrind memcheck (leaks included) over every test,
# built as the c99 configuration with small shapes (MLKT_QUICK) and at most
# AVX2 (valgrind cannot run AVX-512). About 9 minutes on 2 cores, so it is
# not part of make check. Says so, and passes, when valgrind is missing.
CFG_vg = $(CC) -std=c99 -O2 -g -mavx2 -mfma -mf16c -DMLKT_QUICK $(WARN)
$(eval $(call cfg_rules,vg))

check-valgrind: $(addprefix build/vg/,$(TESTS))
	@if ! command -v valgrind > /dev/null 2>&1; then \
	    echo "check-valgrind: skipped (valgrind is not installed)"; exit 0; fi; \
	failed=0; for t in $(TESTS); do \
	    if valgrind -q --error-exitcode=1 --leak-check=full \
	            ./build/vg/$$t > build/vg/$$t.log 2>&1; then echo "[valgrind] $$t: ok"; \
	    else failed=$$((failed + 1)); echo "[valgrind] $$t: FAILED (build/vg/$$t.log)"; \
	        grep -E '^==[0-9]+== [A-Z]|^FAIL' build/vg/$$t.log | head -10; fi; \
	done; echo "check-valgrind: $$failed failed"; [ $$failed -eq 0 ]

# make install PREFIX=/usr/local DESTDIR=: the header, pkg-config and CMake
# package files, filled
# from the same templates CMakeLists.txt uses so both installs agree.
PREFIX     ?= /usr/local
MLK_VER    := $(shell awk '/define MLKERN_VERSION_(MAJOR|MINOR|PATCH) /{v = v s $$3; s = "."} END {print v}' mlkern.h)
MLK_INCDIR  = $(DESTDIR)$(PREFIX)/include
MLK_PCDIR   = $(DESTDIR)$(PREFIX)/share/pkgconfig
MLK_CMDIR   = $(DESTDIR)$(PREFIX)/share/cmake/mlkern
MLK_FILL    = sed -e 's|@MLKERN_VERSION@|$(MLK_VER)|g' -e 's|@MLKERN_PREFIX@|$(PREFIX)|g' \
              -e 's|@MLKERN_INCLUDEDIR@|include|g' -e 's|@MLKERN_CONFIG_TO_PREFIX@|../../..|g'

install:
	install -d $(MLK_INCDIR) $(MLK_PCDIR) $(MLK_CMDIR)
	install -m 644 mlkern.h $(MLK_INCDIR)/
	if [ -f mlkern_cuda.cuh ]; then install -m 644 mlkern_cuda.cuh $(MLK_INCDIR)/; fi
	$(MLK_FILL) mlkern.pc.in > $(MLK_PCDIR)/mlkern.pc
	$(MLK_FILL) cmake/mlkernConfig.cmake.in > $(MLK_CMDIR)/mlkernConfig.cmake
	$(MLK_FILL) cmake/mlkernConfigVersion.cmake.in > $(MLK_CMDIR)/mlkernConfigVersion.cmake

uninstall:
	rm -f $(MLK_INCDIR)/mlkern.h $(MLK_INCDIR)/mlkern_cuda.cuh $(MLK_PCDIR)/mlkern.pc \
	      $(MLK_CMDIR)/mlkernConfig.cmake $(MLK_CMDIR)/mlkernConfigVersion.cmake
	rmdir $(MLK_CMDIR) 2>/dev/null || true

# SVG charts under docs/plots/ from build/bench.csv and build/ternary_loss.csv.
plots:
	sh bench/plots.sh build/bench.csv build/ternary_loss.csv docs/plots

# CUDA: mlkern_cuda.cuh compiled with nvcc and its tests under the host emulator.
include tests/cuda/cuda.mk
