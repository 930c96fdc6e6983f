#!/bin/sh
# The GPU tests under NVIDIA compute-sanitizer (issue 19): memcheck, racecheck and synccheck over every
# test binary that exercises CUDA code, on the tests' own small shapes. One line per tool and test:
# the exit status, the tool's summary line, and the kernels it names (cuBLAS's own kernels, nvjet_* and
# friends, are listed apart: a report there is cuBLAS's, not anvil's). Exit status 1 when a tool
# reports an error in a kernel of anvil's (or a test fails under it), else 0.
# Usage (repository root, GPU machine, after `make`): tests/gpu_sanitize.sh [BUILD] [TOOLS] [SECONDS]
#   BUILD   build directory holding tests/ (default build)
#   TOOLS   space-separated subset of "memcheck racecheck synccheck" (default all three)
#   SECONDS time limit per tool and test (default 300); GPU_SANITIZE_TESTS overrides the test list
B=${1:-build}
TOOLS=${2:-memcheck racecheck synccheck}
LIMIT=${3:-300}
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -z "$CS" ]; then
    echo "gpu_sanitize: compute-sanitizer not found (PATH or /usr/local/cuda*/bin)" >&2
    exit 2
fi
TESTS=${GPU_SANITIZE_TESTS:-"test_cuda_ops test_cuda_matmul test_cuda_quant test_cuda_attention test_flash test_flash_bwd test_cuda_model test_cuda_train test_dp_train"}
LOGS=${GPU_SANITIZE_LOGS:-$(mktemp -d /tmp/anvil-sanitize.XXXXXX)}
mkdir -p "$LOGS"
bad=0
for tool in $TOOLS; do
    for t in $TESTS; do
        bin="$B/tests/$t"
        if [ ! -x "$bin" ]; then
            echo "$tool $t: not built ($bin)"
            bad=1
            continue
        fi
        log="$LOGS/$tool-$t.log"
        extra=
        [ "$tool" = memcheck ] && extra="--leak-check full"
        timeout "$LIMIT" "$CS" --tool "$tool" $extra --error-exitcode 9 "$bin" > "$log" 2>&1
        rc=$?
        summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY" "$log" | tail -1)
        # kernels named in the reports, anvil's apart from cuBLAS's
        ours=$(grep -oE "in ([A-Za-z_][A-Za-z0-9_:<>, ]*)\(" "$log" | sed 's/^in //; s/($//' | grep -vE "^(nvjet|cutlass|sm[0-9]+_xmma|cublas|gemv|gemm)" | sort -u | tr '\n' ' ')
        theirs=$(grep -oE "in ([A-Za-z_][A-Za-z0-9_:<>, ]*)\(" "$log" | sed 's/^in //; s/($//' | grep -E "^(nvjet|cutlass|sm[0-9]+_xmma|cublas|gemv|gemm)" | sort -u | wc -l)
        status=ok
        if [ "$rc" = 124 ]; then status="timeout (${LIMIT}s)"
        elif [ "$rc" = 77 ] || { grep -q "skipped" "$log" && ! grep -q "checks" "$log"; }; then status=skipped
        elif [ -n "$ours" ] || { [ "$rc" != 0 ] && [ "$theirs" = 0 ]; }; then status=FAILED; bad=1
        fi
        echo "$tool $t: $status rc=$rc ${summary:-no summary}${ours:+ anvil kernels: $ours}$( [ "$theirs" != 0 ] && echo " (cuBLAS kernels reported: $theirs)")"
    done
done
echo "logs: $LOGS"
exit $bad
