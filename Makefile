# anvil build: one static library (libanvil.a) + the `anvil` CLI + tests.
# Detects nvcc (CUDA backend) and OpenBLAS; prints what it found. `make CUDA=0` builds without CUDA.
CC      ?= gcc
NVCC    ?= nvcc
BUILD   ?= build
OPT     ?= -O2 -march=native
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-format-truncation -fopenmp -Iinclude -Isrc -MMD -MP
LDLIBS  += -lcjson -lyaml -ledit -lmicrohttpd -lm -lpthread -fopenmp
LDFLAGS ?=

comma := ,
# the build steps of test / bench / asan use every core (the CUDA files take most of a serial build)
JOBS    ?= $(shell nproc 2>/dev/null || echo 2)
# --- optional dependencies -------------------------------------------------------------------
HAVE_NVCC := $(shell command -v $(NVCC) >/dev/null 2>&1 && echo 1)
CUDA ?= $(if $(HAVE_NVCC),1,0)
# OpenBLAS built on OpenMP shares our thread pool (the pthread build would fight it for the cores).
OPENBLAS_OMP := $(firstword $(wildcard /usr/lib/*/openblas-openmp))
HAVE_OPENBLAS := $(shell test -f /usr/include/x86_64-linux-gnu/cblas.h -o -f /usr/include/cblas.h -o -f /usr/include/openblas/cblas.h && echo 1)
ifeq ($(HAVE_OPENBLAS),1)
  CFLAGS += -DAV_HAVE_BLAS
  LDLIBS += $(if $(OPENBLAS_OMP),-L$(OPENBLAS_OMP) -Wl$(comma)-rpath$(comma)$(OPENBLAS_OMP)) -lopenblas
endif

LIB_SRC  := $(sort $(wildcard src/*/*.c))
CU_SRC   := $(sort $(wildcard src/*/*.cu))
CLI_SRC  := $(sort $(wildcard cli/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))

# anvil's version and the git commit it was built from (anvil bench reports both; "unknown" outside git).
AV_VERSION    := 0.1.0
AV_GIT_COMMIT := $(shell c=$$(git rev-parse --short=12 HEAD 2>/dev/null) && { git diff --quiet HEAD -- 2>/dev/null || c="$$c-dirty"; echo "$$c"; } || echo unknown)

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
# the quantized kernels' test again with the AVX2 and the portable implementation compiled in
TEST_BIN += $(BUILD)/tests/test_qmatmul_avx2 $(BUILD)/tests/test_qmatmul_portable
# the checker of an `anvil bench` report (tests/cli_bench.sh)
TEST_BIN += $(BUILD)/tests/bench_check
# the CPU flash attention test again with flash.c's AVX2 and portable tile products compiled in
TEST_BIN += $(BUILD)/tests/test_flash_cpu_avx2 $(BUILD)/tests/test_flash_cpu_portable
# the prefill GEMM's test again with its AVX2 kernel, and with none (it must decline)
TEST_BIN += $(BUILD)/tests/test_gemm_avx2 $(BUILD)/tests/test_gemm_portable

ifeq ($(CUDA),1)
  CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell readlink -f $$(command -v $(NVCC))))
  CFLAGS    += -DAV_HAVE_CUDA -I$(CUDA_HOME)/include
  NVFLAGS   ?= -O3 -std=c++17 -Isrc -Iinclude -DAV_HAVE_CUDA -Xcompiler -Wall,-Wextra,-Werror,-fPIC \
               -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a
  LIB_OBJ   += $(CU_SRC:%.cu=$(BUILD)/%.cu.o)
  LDLIBS    += -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/targets/x86_64-linux/lib -lnccl -lcublasLt -lcublas -lcudart -lstdc++ -ldl -lrt
endif

.PHONY: all setup test test-long bench asan clean info fuzz fuzz-build sanitize-gpu
all: info $(BUILD)/anvil

info:
	@echo "anvil build: CC=$(CC) CUDA=$(CUDA) OpenBLAS=$(if $(HAVE_OPENBLAS),$(if $(OPENBLAS_OMP),openmp,yes),no) BUILD=$(BUILD)"

setup:
	@scripts/setup.sh

$(BUILD)/libanvil.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/anvil: $(CLI_OBJ) $(BUILD)/libanvil.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libanvil.a $(LDLIBS) -lutil

# the commit is baked into bench_sys.o only; a stamp file rebuilds it when the commit changes
$(BUILD)/commit.stamp: FORCE
	@mkdir -p $(dir $@)
	@echo '$(AV_VERSION) $(AV_GIT_COMMIT)' | cmp -s - $@ || echo '$(AV_VERSION) $(AV_GIT_COMMIT)' > $@
$(BUILD)/cli/bench_sys.o: $(BUILD)/commit.stamp
$(BUILD)/cli/bench_sys.o: CFLAGS += -DAV_VERSION='"$(AV_VERSION)"' -DAV_GIT_COMMIT='"$(AV_GIT_COMMIT)"'
.PHONY: FORCE
FORCE:

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

# -MMD/-MF: header dependencies for .cu files too (a changed .cuh rebuilds every kernel that includes it)
$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -MMD -MP -MF $(@:.o=.d) -c -o $@ $<

$(BUILD)/tests/%: tests/%.c $(BUILD)/libanvil.a $(wildcard tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libanvil.a $(LDLIBS)

$(BUILD)/tests/test_qmatmul_avx2: tests/test_qmatmul.c src/quant/qmatmul.c $(BUILD)/libanvil.a $(wildcard tests/*.h)
	$(CC) $(CFLAGS) -mno-avx512f $(LDFLAGS) -o $@ $< $(BUILD)/libanvil.a $(LDLIBS)
$(BUILD)/tests/test_qmatmul_portable: tests/test_qmatmul.c src/quant/qmatmul.c $(BUILD)/libanvil.a $(wildcard tests/*.h)
	$(CC) $(CFLAGS) -mno-avx2 $(LDFLAGS) -o $@ $< $(BUILD)/libanvil.a $(LDLIBS)
$(BUILD)/tests/test_flash_cpu_avx2: tests/test_flash_cpu.c src/attention/flash.c $(BUILD)/libanvil.a $(wildcard tests/*.h)
	$(CC) $(CFLAGS) -mno-avx512f -DFLASH_TEST_PORTABLE $(LDFLAGS) -o $@ tests/test_flash_cpu.c src/attention/flash.c $(BUILD)/libanvil.a $(LDLIBS)
$(BUILD)/tests/test_flash_cpu_portable: tests/test_flash_cpu.c src/attention/flash.c $(BUILD)/libanvil.a $(wildcard tests/*.h)
	$(CC) $(CFLAGS) -mno-avx512f -mno-avx2 -DFLASH_TEST_PORTABLE $(LDFLAGS) -o $@ tests/test_flash_cpu.c src/attention/flash.c $(BUILD)/libanvil.a $(LDLIBS)
$(BUILD)/tests/test_gemm_avx2: tests/test_gemm.c src/ops/gemm.c $(BUILD)/libanvil.a $(wildcard tests/*.h)
	$(CC) $(CFLAGS) -mno-avx512f $(LDFLAGS) -o $@ $< $(BUILD)/libanvil.a $(LDLIBS)
$(BUILD)/tests/test_gemm_portable: tests/test_gemm.c src/ops/gemm.c $(BUILD)/libanvil.a $(wildcard tests/*.h)
	$(CC) $(CFLAGS) -mno-avx2 $(LDFLAGS) -o $@ $< $(BUILD)/libanvil.a $(LDLIBS)

# `make test`: set up dependencies, build, run every test (C unit tests + CLI shell tests).
test: setup
	@$(MAKE) --no-print-directory -j$(JOBS) all tests
	@tests/run.sh $(BUILD)

tests: $(TEST_BIN)

# Same suite under AddressSanitizer + UBSan (CUDA off: the sanitizers do not see device code).
asan: setup
	@$(MAKE) --no-print-directory -j$(JOBS) BUILD=build-asan CUDA=0 OPT="-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	   LDFLAGS="-fsanitize=address,undefined" all tests
	@ASAN_OPTIONS=detect_leaks=1 tests/run.sh build-asan

# the GPU tests under compute-sanitizer memcheck/racecheck/synccheck (GPU machine; tests/gpu_sanitize.sh)
sanitize-gpu: all tests
	@tests/gpu_sanitize.sh $(BUILD)

test-long: test
	@AV_TEST_LONG=1 tests/run.sh $(BUILD)

bench: setup
	@$(MAKE) --no-print-directory -j$(JOBS) all
	@bench/run.sh $(BUILD) $(BENCH_ARGS)

clean:
	rm -rf build build-asan build-fuzz

# --- fuzzing (clang's libFuzzer; not part of `make test`) --------------------------------------
# Every fuzz/fuzz_<t>.c is a target (entry LLVMFuzzerTestOneInput). `make fuzz` builds build-fuzz/fuzz_<t>
# (library and cli/ compiled for coverage under ASan + UBSan), seeds build-fuzz/corpus-<t> from the
# fixture globs listed in fuzz/<t>.seeds, tests/fixtures/fuzz-seeds/<t>/ and tests/fixtures/fuzz-regress/<t>/
# (each optional), and runs each target for FUZZ_RUNS executions (one process, with fuzz/<t>.dict if there
# is one). FUZZ_TARGETS="gguf config" picks some. Crashing inputs land in build-fuzz/<t>-crash-*; fix the
# bug, then add the input to tests/fixtures/fuzz-regress/<t>/, which `make test` replays with gcc (below).
FUZZ_CC      ?= clang
FUZZ_RUNS    ?= 100000
FUZZ_MAXLEN  ?= 65536
FUZZ_ARGS    ?=
FUZZ_DIR     := build-fuzz
FUZZ_NAMES   := $(patsubst fuzz/fuzz_%.c,%,$(sort $(wildcard fuzz/fuzz_*.c)))
FUZZ_TARGETS ?= $(FUZZ_NAMES)
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -g -O1 -march=native -fno-omit-frame-pointer -Wall -Wextra -Werror -fopenmp -Iinclude -Isrc -MMD -MP \
                $(if $(HAVE_OPENBLAS),-DAV_HAVE_BLAS)
FUZZ_OBJ     := $(LIB_SRC:%.c=$(FUZZ_DIR)/%.o)
FUZZ_CLI_OBJ := $(filter-out %/main.o,$(CLI_SRC:%.c=$(FUZZ_DIR)/%.o))
FUZZ_BIN     := $(FUZZ_NAMES:%=$(FUZZ_DIR)/fuzz_%)
FUZZ_LDLIBS   = $(filter-out -L%cuda% -lcublas% -lcudart -lstdc++ -ldl -lrt -fopenmp,$(LDLIBS))

$(FUZZ_DIR)/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(FUZZ_SAN) -c -o $@ $<

$(FUZZ_DIR)/libanvil.a: $(FUZZ_OBJ)
	@rm -f $@
	ar rcs $@ $^
$(FUZZ_DIR)/libanvil-cli.a: $(FUZZ_CLI_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_DIR)/fuzz_%: fuzz/fuzz_%.c $(FUZZ_DIR)/libanvil-cli.a $(FUZZ_DIR)/libanvil.a $(wildcard fuzz/*.h)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $< $(FUZZ_DIR)/libanvil-cli.a $(FUZZ_DIR)/libanvil.a $(FUZZ_LDLIBS)

fuzz-build: $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)

fuzz: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do \
	  c=$(FUZZ_DIR)/corpus-$$t; mkdir -p $$c; \
	  if [ -f fuzz/$$t.seeds ]; then for g in $$(grep -v '^#' fuzz/$$t.seeds); do cp $$g $$c/; done; fi; \
	  for d in tests/fixtures/fuzz-seeds/$$t tests/fixtures/fuzz-regress/$$t; do [ -d $$d ] && cp $$d/* $$c/ || true; done; \
	  dict=; [ -f fuzz/$$t.dict ] && dict=-dict=fuzz/$$t.dict; \
	  echo "== fuzz_$$t: $(FUZZ_RUNS) runs"; \
	  $(FUZZ_DIR)/fuzz_$$t -runs=$(FUZZ_RUNS) -max_len=$(FUZZ_MAXLEN) $$dict -artifact_prefix=$(FUZZ_DIR)/$$t- \
	     -print_final_stats=1 $(FUZZ_ARGS) $$c; \
	done

# The fuzz targets' entry functions again, built with $(CC) and a plain main() (tests/fuzz_replay.c) that
# runs files through them: tests/cli_fuzz_regress.sh replays tests/fixtures/fuzz-regress/ and the seeds.
FUZZ_REPLAY := $(FUZZ_NAMES:%=$(BUILD)/fuzz-replay/fuzz_%)
$(BUILD)/libanvil-cli.a: $(filter-out %/main.o,$(CLI_OBJ))
	@rm -f $@
	ar rcs $@ $^
$(BUILD)/fuzz-replay/fuzz_%: fuzz/fuzz_%.c tests/fuzz_replay.c $(BUILD)/libanvil-cli.a $(BUILD)/libanvil.a $(wildcard fuzz/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< tests/fuzz_replay.c $(BUILD)/libanvil-cli.a $(BUILD)/libanvil.a $(LDLIBS)
tests: $(FUZZ_REPLAY)

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(if $(filter fuzz fuzz-build,$(MAKECMDGOALS)),$(FUZZ_OBJ:.o=.d) $(FUZZ_CLI_OBJ:.o=.d))
