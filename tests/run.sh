#!/bin/sh
# Runs every C test binary in BUILD/tests and every tests/cli_*.sh; prints a summary; non-zero on failure.
BUILD=${1:-build}
export ANVIL="$PWD/$BUILD/anvil"
export AV_FIXTURES="${AV_FIXTURES:-$PWD/../shared/fixtures}"
export AV_DATA="${AV_DATA:-$PWD/../shared/data}"
ROOT_TMP=$(mktemp -d /tmp/anvil-test.XXXXXX)
trap 'rm -rf "$ROOT_TMP"' EXIT
pass=0; fail=0; failed=""
for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  export AV_TMP="$ROOT_TMP/$name"; mkdir -p "$AV_TMP"
  start=$(date +%s)
  if "$t" > "$ROOT_TMP/$name.log" 2>&1; then pass=$((pass+1)); r=ok; else fail=$((fail+1)); failed="$failed $name"; r=FAIL; fi
  grep -E '^skipped:' "$ROOT_TMP/$name.log" | sort -u | sed "s/^/  [$name] /"
  echo "[$r] $name ($(( $(date +%s) - start ))s)"
  [ $r = FAIL ] && tail -30 "$ROOT_TMP/$name.log"
done
for t in tests/cli_*.sh; do
  [ -f "$t" ] || continue
  name=$(basename "$t" .sh)
  export AV_TMP="$ROOT_TMP/$name"; mkdir -p "$AV_TMP"
  start=$(date +%s)
  if sh "$t" > "$ROOT_TMP/$name.log" 2>&1; then pass=$((pass+1)); r=ok; else fail=$((fail+1)); failed="$failed $name"; r=FAIL; fi
  grep -E '^skipped:' "$ROOT_TMP/$name.log" | sort -u | sed "s/^/  [$name] /"
  echo "[$r] $name ($(( $(date +%s) - start ))s)"
  [ $r = FAIL ] && tail -30 "$ROOT_TMP/$name.log"
done
echo "== $pass passed, $fail failed${failed:+:$failed}"
[ $fail -eq 0 ]
