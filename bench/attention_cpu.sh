#!/bin/sh
# CPU attention benchmark (not a test): builds bench/attention_cpu.c against BUILD/libanvil.a and
# times standard vs flash training attention, forward and forward + backward, at TinyLlama's heads
# (H 32, KVH 4, head_dim 64, B 1) for T 512, 2048, 8192 (median of REPS). Results: bench/NOTES-attention.md.
#   bench/attention_cpu.sh [BUILD [REPS [T...]]]
set -e
BUILD=${1:-build}
REPS=${2:-3}
[ $# -ge 2 ] && shift 2 || shift $#
BLAS=/usr/lib/x86_64-linux-gnu/openblas-openmp
BIN=$(mktemp /tmp/attn-bench.XXXXXX)
trap 'rm -f "$BIN"' EXIT
cc -O2 -march=native -fopenmp -Iinclude -Isrc bench/attention_cpu.c "$BUILD/libanvil.a" -lcjson -lyaml -lm \
   $( [ -d $BLAS ] && echo "-L$BLAS -Wl,-rpath,$BLAS" ) -lopenblas -o "$BIN"
echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
"$BIN" "$REPS" "$@"
