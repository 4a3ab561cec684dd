# mlkern - `make` builds and runs the examples, `make check` runs every test
# configuration, `make bench` / `make bench-peers` measure.
CC      ?= gcc
CXX     ?= g++
CLANG   ?= clang
NATIVE  ?= -march=native
WARN     = -Wall -Wextra -Wpedantic -Werror
HDRS     = mlkern.h $(wildcard src/*.h) tests/mlkt.h
TESTS    = $(patsubst tests/%.c,%,$(wildcard tests/test_*.c))
EXAMPLES = $(patsubst examples/%.c,%,$(wildcard examples/*.c))
BENCHES  = $(patsubst bench/%.c,%,$(wildcard bench/bench_*.c))

# One line per test configuration: the same sources, compiled each way.
CFG_c99    = $(CC) -std=c99 -O2 $(NATIVE) $(WARN)
CFG_asan   = $(CLANG) -std=c99 -O1 -g $(NATIVE) -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -DMLKT_QUICK $(WARN)
CFG_omp    = $(CC) -std=c99 -O3 $(NATIVE) -fopenmp $(WARN)
CFG_nosimd = $(CC) -std=c99 -O2 -DMLKERN_NO_SIMD $(WARN)
CFG_cxx    = $(CXX) -x c++ -std=c++11 -O2 $(NATIVE) -Wall -Wextra -Werror
CFG_static = $(CC) -std=c99 -O2 $(NATIVE) -DMLKERN_STATIC -DMLKT_TWO_TU $(WARN) -Wno-unused-function
CONFIGS  = c99 asan omp nosimd cxx static

.PHONY: all examples check tests bench bench-peers fuzz clean install uninstall plots
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

fuzz: $(addprefix build/fuzz/,$(patsubst tests/%.c,%,$(wildcard tests/fuzz_*.c)))
