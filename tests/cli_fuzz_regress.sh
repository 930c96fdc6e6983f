#!/bin/sh
# Replays every fuzz target's regression corpus (tests/fixtures/fuzz-regress/<t>/: inputs that once
# crashed, kept after the fix) and its seeds through the target's entry function, built with the
# normal compiler and a plain main() (BUILD/fuzz-replay/fuzz_<t>; no clang or libFuzzer needed).
# Under `make asan` the replay runs with the sanitizers. Any crash fails.
. tests/lib.sh
need_fixtures
R="$(dirname "$ANVIL")/fuzz-replay"
n=0
for src in fuzz/fuzz_*.c; do
  t=$(basename "$src" .c); t=${t#fuzz_}
  bin="$R/fuzz_$t"
  [ -x "$bin" ] || { bad "$t: no replay binary $bin (make tests)"; continue; }
  set --
  [ -d "$FX/fuzz-regress/$t" ] && set -- "$@" "$FX/fuzz-regress/$t"
  [ -d "$FX/fuzz-seeds/$t" ] && set -- "$@" "$FX/fuzz-seeds/$t"
  if [ -f "fuzz/$t.seeds" ]; then
    for g in $(grep -v '^#' "fuzz/$t.seeds"); do [ -f "$g" ] && set -- "$@" "$g"; done
  fi
  [ $# -eq 0 ] && { skip "$t: no inputs to replay"; continue; }
  if "$bin" "$@" > "$AV_TMP/$t.out" 2> "$AV_TMP/$t.err"; then
    ok "$t: $(tail -1 "$AV_TMP/$t.out")"; n=$((n+1))
  else
    bad "$t: replay failed: $(grep -v '^replay ' "$AV_TMP/$t.err" | tail -15) (last input: $(grep '^replay ' "$AV_TMP/$t.err" | tail -1))"
  fi
done
[ $n -gt 0 ] || bad "no fuzz target replayed"
finish
