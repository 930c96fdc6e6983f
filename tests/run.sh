#!/bin/sh
# Runs every C test binary in BUILD/tests and every tests/cli_*.sh from the repository root; reads
# only the repository (tests/fixtures, data/). Exit status 77 means "skipped" (the whole suite
# cannot run here, e.g. GPU-only without a GPU): counted apart, never as passed. Last line:
# "N passed, N failed, N skipped"; exits non-zero on any failure. A test running longer than
# AV_TEST_TIMEOUT seconds (default 1200) is stopped and fails.
BUILD=${1:-build}
export ANVIL="$PWD/$BUILD/anvil"
export AV_FIXTURES="$PWD/tests/fixtures"
export AV_DATA="$PWD/data"
ROOT_TMP=$(mktemp -d /tmp/anvil-test.XXXXXX)
trap 'rm -rf "$ROOT_TMP"' EXIT
pass=0; fail=0; skipped=0; failed=""
run_one() { # name command...
  name=$1; shift
  export AV_TMP="$ROOT_TMP/$name"; mkdir -p "$AV_TMP"
  start=$(date +%s)
  timeout "${AV_TEST_TIMEOUT:-1200}" "$@" > "$ROOT_TMP/$name.log" 2>&1; rc=$?
  if [ $rc -eq 0 ]; then pass=$((pass+1)); r=ok
  elif [ $rc -eq 77 ]; then skipped=$((skipped+1)); r=SKIP
  else fail=$((fail+1)); failed="$failed $name"; r=FAIL; fi
  grep -E '^skipped:' "$ROOT_TMP/$name.log" | sort -u | sed "s/^/  [$name] /"
  echo "[$r] $name ($(( $(date +%s) - start ))s)"
  [ $r = FAIL ] && tail -30 "$ROOT_TMP/$name.log"
}
for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] || continue
  run_one "$(basename "$t")" "$t"
done
for t in tests/cli_*.sh; do
  [ -f "$t" ] || continue
  run_one "$(basename "$t" .sh)" sh "$t"
done
[ -n "$failed" ] && echo "failed:$failed"
echo "$pass passed, $fail failed, $skipped skipped"
[ $fail -eq 0 ]
