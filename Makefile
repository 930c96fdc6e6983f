# anvil build: one static library (libanvil.a) + the `anvil` CLI + tests.
# Detects nvcc (CUDA backend) and OpenBLAS; prints what it found. `make CUDA=0` builds without CUDA.
CC      ?= gcc
NVCC    ?= nvcc
BUILD   ?= build
OPT     ?= -O2 -march=native
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-format-truncation -fopenmp -Iinclude -Isrc -MMD -MP
LDLIBS  += -lcjson -lyaml -ledit -lm -lpthread -fopenmp
LDFLAGS ?=

comma := ,
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

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
# the quantized kernels' test again with the AVX2 and the portable implementation compiled in
TEST_BIN += $(BUILD)/tests/test_qmatmul_avx2 $(BUILD)/tests/test_qmatmul_portable

ifeq ($(CUDA),1)
  CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell readlink -f $$(command -v $(NVCC))))
  CFLAGS    += -DAV_HAVE_CUDA -I$(CUDA_HOME)/include
  NVFLAGS   ?= -O3 -std=c++17 -Isrc -Iinclude -DAV_HAVE_CUDA -Xcompiler -Wall,-Wextra,-Werror,-fPIC \
               -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a
  LIB_OBJ   += $(CU_SRC:%.cu=$(BUILD)/%.cu.o)
  LDLIBS    += -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/targets/x86_64-linux/lib -lcublasLt -lcublas -lcudart -lstdc++ -ldl -lrt
endif

.PHONY: all setup test test-long bench asan clean info
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
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libanvil.a $(LDLIBS)

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

# `make test`: set up dependencies, build, run every test (C unit tests + CLI shell tests).
test: setup
	@$(MAKE) --no-print-directory all tests
	@tests/run.sh $(BUILD)

tests: $(TEST_BIN)

# Same suite under AddressSanitizer + UBSan (CUDA off: the sanitizers do not see device code).
asan: setup
	@$(MAKE) --no-print-directory BUILD=build-asan CUDA=0 OPT="-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	   LDFLAGS="-fsanitize=address,undefined" all tests
	@ASAN_OPTIONS=detect_leaks=1 tests/run.sh build-asan

test-long: test
	@AV_TEST_LONG=1 tests/run.sh $(BUILD)

bench: setup
	@$(MAKE) --no-print-directory all
	@bench/run.sh $(BUILD)

clean:
	rm -rf build build-asan

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)
