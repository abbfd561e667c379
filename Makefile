# lazymoe build.
#
# Plain GNU Make, because the project is one library, one CLI and a set of test
# programs, and every source folder is picked up by wildcard: adding a file to a
# subsystem folder needs no edit here.
#
#   make            release build: build/lazymoe and build/liblazymoe.a
#   make test       AddressSanitizer + UBSan build of everything, then tests/run.sh
#   make fuzz       libFuzzer targets under fuzz/ (clang)
#   make CUDA=1     also build/cuda/lazymoe: the CLI with the CUDA backend (nvcc)
#   make test-cuda  build and run tests/cuda/test_cuda.c (a machine with a GPU)
#   make clean
#
# Dependencies are Debian packages: libjansson-dev (JSON), libpcre2-dev (tokenizer
# split regexes), libmicrohttpd-dev (the HTTP server). `tools/install-deps.sh` installs them.

CC      ?= cc
CSTD    := -std=c11 -D_GNU_SOURCE
WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-missing-field-initializers
INC     := -Iinclude -Isrc
OPT     ?= -O2 -g
LIBS    := -ljansson -lpcre2-8 -lmicrohttpd -lpthread -lm

SRC     := $(sort $(wildcard src/*/*.c src/*/*/*.c))
LIB_SRC := $(filter-out src/cli/%,$(SRC))
CLI_SRC := $(filter src/cli/%,$(SRC))
TEST_SRC:= $(sort $(wildcard tests/test_*.c))
EX_SRC  := $(sort $(wildcard examples/*.c))

# ---- release ----------------------------------------------------------------
REL     := build/release
REL_OBJ := $(LIB_SRC:%.c=$(REL)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(REL)/%.o)

all: build/lazymoe build/liblazymoe.a build/gguf_export $(if $(filter 1,$(CUDA)),cuda)

# tools/gguf_export.c: model directory -> GGUF (src/convert/gguf_export.h)
build/gguf_export: $(REL)/tools/gguf_export.o build/liblazymoe.a
	$(CC) $(OPT) -o $@ $< build/liblazymoe.a $(LIBS)

build/liblazymoe.a: $(REL_OBJ)
	@mkdir -p $(dir $@)
	ar rcs $@ $^

build/lazymoe: $(CLI_OBJ) build/liblazymoe.a
	$(CC) $(OPT) -o $@ $(CLI_OBJ) build/liblazymoe.a $(LIBS)

$(REL)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(WARN) $(INC) $(OPT) -MMD -MP -c $< -o $@

# bench/bench_attention.c: the CPU attention op alone (not in all; bench/RESULTS.md)
build/bench_attention: bench/bench_attention.c build/liblazymoe.a
	$(CC) $(CSTD) $(WARN) $(INC) $(OPT) -o $@ $< build/liblazymoe.a $(LIBS)

# ---- sanitizer build used by the tests ---------------------------------------
SAN     := build/asan
SANFLAGS:= -DLAZYMOE_SOURCE_DIR=\"$(CURDIR)\" -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SAN_OBJ := $(LIB_SRC:%.c=$(SAN)/%.o)
SAN_CLI := $(CLI_SRC:%.c=$(SAN)/%.o)
TESTS   := $(TEST_SRC:tests/%.c=$(SAN)/tests/%)
EXAMPLES:= $(EX_SRC:examples/%.c=$(SAN)/examples/%)

$(SAN)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(WARN) $(INC) $(SANFLAGS) -MMD -MP -c $< -o $@

$(SAN)/liblazymoe.a: $(SAN_OBJ)
	ar rcs $@ $^

$(SAN)/lazymoe: $(SAN_CLI) $(SAN)/liblazymoe.a
	$(CC) $(SANFLAGS) -o $@ $(SAN_CLI) $(SAN)/liblazymoe.a $(LIBS)

$(SAN)/tests/%: tests/%.c tests/harness.h $(SAN)/liblazymoe.a
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(WARN) $(INC) $(SANFLAGS) -o $@ $< $(SAN)/liblazymoe.a $(LIBS)

$(SAN)/examples/%: examples/%.c $(SAN)/liblazymoe.a
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(WARN) $(INC) $(SANFLAGS) -o $@ $< $(SAN)/liblazymoe.a $(LIBS)

test-build: all $(SAN)/lazymoe $(TESTS) $(EXAMPLES)

# The fuzz targets are built here, with the rest (in parallel under -j), so that
# tests/cli/fuzz_smoke.sh only runs them.
test: test-build fuzz
	tests/run.sh

# ---- CUDA backend (src/kernels/cuda/, optional) --------------------------------
# Built only when asked (`make CUDA=1`, `make cuda`, `make test-cuda`), never by the
# default targets: the default binary stays the same everywhere and needs no CUDA
# runtime. The CUDA build is its own tree, build/cuda/: the release objects, with
# backend.c compiled again with LAZYMOE_CUDA (it then names the cuda backend) and
# the .cu files compiled by nvcc for sm_90 (H100/H200) plus sm_80 PTX that newer
# GPUs' drivers compile at load. --fmad=false: a * b + c rounds twice, as the C
# reference does (cuda_backend.cu). The CUDA runtime is linked statically, and so
# are jansson and pcre2 in the test binary, so that it runs on a machine that has
# only the driver (the GPU box: tools/cuda_check.sh).
NVCC      ?= $(or $(shell command -v nvcc 2>/dev/null),/usr/local/cuda/bin/nvcc)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
NVBASE    := -std=c++17 -O2 -g --fmad=false -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings
NVFLAGS   := $(NVBASE) -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=compute_80
CU_SRC    := $(sort $(wildcard src/*/*/*.cu))
CUDA_DIR  := build/cuda
CUDA_CU_OBJ := $(CU_SRC:%.cu=$(CUDA_DIR)/%.o)
CUDA_LIB_OBJ := $(filter-out $(REL)/src/kernels/backend.o,$(REL_OBJ)) $(CUDA_DIR)/src/kernels/backend.o $(CUDA_CU_OBJ)
CUDA_RT   := -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++
STATIC_DEPS := -Wl,-Bstatic -ljansson -lpcre2-8 -Wl,-Bdynamic -lpthread -lm

$(CUDA_DIR)/src/kernels/backend.o: src/kernels/backend.c
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(WARN) $(INC) $(OPT) -DLAZYMOE_CUDA -MMD -MP -c $< -o $@

$(CUDA_DIR)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) $(INC) -MMD -MP -c $< -o $@

$(CUDA_DIR)/liblazymoe.a: $(CUDA_LIB_OBJ)
	ar rcs $@ $^

$(CUDA_DIR)/lazymoe: $(CLI_OBJ) $(CUDA_DIR)/liblazymoe.a
	$(CC) $(OPT) -o $@ $(CLI_OBJ) $(CUDA_DIR)/liblazymoe.a $(LIBS) $(CUDA_RT)

$(CUDA_DIR)/tests/test_cuda: tests/cuda/test_cuda.c tests/harness.h $(CUDA_DIR)/liblazymoe.a
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(WARN) $(INC) $(OPT) -DLAZYMOE_SOURCE_DIR=\"$(CURDIR)\" -o $@ $< $(CUDA_DIR)/liblazymoe.a \
	    $(STATIC_DEPS) $(CUDA_RT)

# bench/cuda/gemv_lab.cu: the decode GEMV against variants, on the GPU box (not in all)
$(CUDA_DIR)/gemv_lab: $(CUDA_DIR)/bench/cuda/gemv_lab.o $(CUDA_DIR)/liblazymoe.a
	$(CC) $(OPT) -o $@ $< $(CUDA_DIR)/liblazymoe.a $(STATIC_DEPS) $(CUDA_RT)

# The GPU box's carry (the device tool takes at most 64 MiB with the tree): the CLI and
# test_cuda for sm_90 only (no PTX), jansson, pcre2, microhttpd and gnutls linked
# statically (the box has none of them), libunistring beside them: ~3 MB compressed.
CARRY_DIR := build/carry90
CARRY_LIBS := -Wl,-Bstatic -ljansson -lpcre2-8 -lmicrohttpd -lgnutls -lhogweed -lnettle -lgmp -ltasn1 -lidn2 \
              -Wl,-Bdynamic -l:libunistring.so.2 -l:libp11-kit.so.0 -lpthread -lm
$(CARRY_DIR)/cuda_backend.o: src/kernels/cuda/cuda_backend.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVBASE) -gencode arch=compute_90,code=sm_90 $(INC) -c $< -o $@
$(CARRY_DIR)/liblazymoe.a: $(filter-out $(CUDA_CU_OBJ),$(CUDA_LIB_OBJ)) $(CARRY_DIR)/cuda_backend.o
	rm -f $@ && ar rcs $@ $^
$(CARRY_DIR)/lazymoe: $(CLI_OBJ) $(CARRY_DIR)/liblazymoe.a
	$(CC) $(OPT) -o $@ $(CLI_OBJ) $(CARRY_DIR)/liblazymoe.a $(CARRY_LIBS) $(CUDA_RT) && strip -g $@
$(CARRY_DIR)/test_cuda: tests/cuda/test_cuda.c tests/harness.h $(CARRY_DIR)/liblazymoe.a
	$(CC) $(CSTD) $(WARN) $(INC) $(OPT) -DLAZYMOE_SOURCE_DIR=\"$(CURDIR)\" -o $@ $< $(CARRY_DIR)/liblazymoe.a \
	    $(STATIC_DEPS) $(CUDA_RT) && strip -g $@
# make cuda-carry: build/device-carry.tar.xz with build/carry90 (bench/cuda/*.sh read it there)
cuda-carry: $(CARRY_DIR)/lazymoe $(CARRY_DIR)/test_cuda
	@mkdir -p $(CARRY_DIR)/libs && cp -L /usr/lib/x86_64-linux-gnu/libunistring.so.2 $(CARRY_DIR)/libs/
	git log -1 --format='%h %s' | cut -c1-120 > $(CARRY_DIR)/commit.txt
	XZ_OPT=-9e tar cJf build/device-carry.tar.xz $(CARRY_DIR)/lazymoe $(CARRY_DIR)/test_cuda $(CARRY_DIR)/libs $(CARRY_DIR)/commit.txt
	@ls -la build/device-carry.tar.xz

cuda: $(CUDA_DIR)/lazymoe

test-cuda: $(CUDA_DIR)/tests/test_cuda
	$(CUDA_DIR)/tests/test_cuda

# ---- fuzzing ------------------------------------------------------------------
FUZZ_SRC := $(sort $(wildcard fuzz/fuzz_*.c))
FUZZ_BIN := $(FUZZ_SRC:fuzz/%.c=build/fuzz/%)
FZ_FLAGS := -O1 -g -fsanitize=fuzzer,address,undefined
FZ_OBJ   := $(LIB_SRC:%.c=build/fuzz/obj/%.o)

build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(CSTD) $(WARN) $(INC) -O1 -g -fsanitize=fuzzer-no-link,address,undefined -MMD -MP -c $< -o $@

build/fuzz/%: fuzz/%.c $(FZ_OBJ)
	@mkdir -p $(dir $@)
	clang $(CSTD) $(WARN) $(INC) $(FZ_FLAGS) -o $@ $< $(FZ_OBJ) $(LIBS)

fuzz: $(FUZZ_BIN)

clean:
	rm -rf build

.PHONY: all test test-build fuzz clean cuda test-cuda cuda-carry
# Keep intermediate objects (fuzz objects would otherwise be deleted after linking).
.SECONDARY:
-include $(REL_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(SAN_OBJ:.o=.d) $(SAN_CLI:.o=.d) $(FZ_OBJ:.o=.d) $(CUDA_CU_OBJ:.o=.d) \
    $(CUDA_DIR)/src/kernels/backend.d
