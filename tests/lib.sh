# Shared helpers for CLI shell tests: sourced by tests/cli_*.sh.
set -u
FX="${AV_FIXTURES:-$PWD/tests/fixtures}"
T_FAIL=0
ok()   { echo "ok: $*"; }
bad()  { echo "FAIL: $*"; T_FAIL=1; }
skip() { echo "skipped: $*"; }
# fixtures are part of the repository: a missing folder fails the test
need_fixtures() { [ -d "$FX" ] || { echo "FAIL: no fixtures at $FX"; exit 1; }; }
# skip_all WHY: the whole test cannot run here (tests/run.sh counts it as skipped, not passed)
skip_all() { skip "$*"; exit 77; }
# expect_error DESC PATTERN cmd...: command must exit non-zero with a one-line stderr matching PATTERN
expect_error() {
  desc=$1; pat=$2; shift 2
  "$@" > "$AV_TMP/out.$$" 2> "$AV_TMP/err.$$"; rc=$?
  lines=$(wc -l < "$AV_TMP/err.$$")
  if [ $rc -eq 0 ]; then bad "$desc: exit 0"; elif [ $rc -ge 128 ]; then bad "$desc: crashed (rc=$rc)";
  elif ! grep -qE "$pat" "$AV_TMP/err.$$"; then bad "$desc: stderr lacks /$pat/: $(cat "$AV_TMP/err.$$")";
  elif [ "$lines" -ne 1 ]; then bad "$desc: $lines stderr lines: $(cat "$AV_TMP/err.$$")"; else ok "$desc"; fi
}
finish() { [ $T_FAIL -eq 0 ] && echo "all ok" ; exit $T_FAIL; }
