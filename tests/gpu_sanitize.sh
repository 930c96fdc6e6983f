#!/bin/sh
# The GPU tests under NVIDIA compute-sanitizer (issue 19): memcheck, racecheck and synccheck over every
# test binary that exercises CUDA code, on the tests' own small shapes. One line per tool and test:
# the exit status, the tool's summary line, and the kernels it names (cuBLAS's own kernels, nvjet_* and
# friends, are listed apart: a report there is cuBLAS's, not anvil's; so are CUDA API errors returned
# inside NCCL or cuBLAS). memcheck runs with --leak-check full: the tests and the CLI return every
# device allocation at exit (av_cuda_shutdown), so a leak is reported as an error. Exit status 1 when a
# tool reports an error in anvil's kernels or allocations (or a test fails under it), else 0.
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
        # device code named in the tool's own lines ("at KERNEL+0x.." / "at void KERNEL<..>(..)"), not the test's output
        names=$(grep "^=========" "$log" | grep -v "Saved host backtrace" | grep -oE " at (void )?[A-Za-z_][A-Za-z0-9_]*" | sed 's/^ at //; s/^void //' | sort -u)
        ours=$(echo "$names" | grep -vE "^(nvjet|cutlass|sm[0-9]+_xmma|cublas|gemv|gemm|allocation|kernel|launch|$)" | tr '\n' ' ')
        theirs=$(echo "$names" | grep -cE "^(nvjet|cutlass|sm[0-9]+_xmma|cublas|gemv|gemm)")
        # CUDA API errors returned inside NCCL or cuBLAS (NCCL probes kernels built for other GPUs at init)
        errs=$(grep -oE "ERROR SUMMARY: [0-9]+" "$log" | tail -1 | grep -oE "[0-9]+$")
        api_lib=$(awk '/Program hit/ {p = 1; next} p && /Host Frame/ {if ($0 ~ /libnccl|libcublas/) c++; p = 0} END {print c + 0}' "$log")
        status=ok
        if [ "$rc" = 124 ]; then status="timeout (${LIMIT}s)"
        elif [ "$rc" = 77 ] || { grep -q "skipped" "$log" && ! grep -q "checks" "$log"; }; then status=skipped
        elif [ -n "$ours" ]; then status=FAILED; bad=1
        elif [ "$rc" != 0 ] && [ "$theirs" = 0 ] && [ "${errs:-0}" != "$api_lib" ]; then status=FAILED; bad=1
        fi
        echo "$tool $t: $status rc=$rc ${summary:-no summary}${ours:+ anvil kernels: $ours}$( [ "$theirs" != 0 ] && echo " (cuBLAS kernels reported: $theirs)")$( [ "$api_lib" != 0 ] && echo " (API errors inside NCCL/cuBLAS: $api_lib)")"
    done
done
echo "logs: $LOGS"
exit $bad
