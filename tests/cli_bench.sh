#!/bin/sh
# anvil bench --quick: every suite runs on the small synthesized model (HOME points into the test's
# temp directory, so the model cache is fresh), then build/tests/bench_check reads summary.json:
# every suite ok, every number finite and plausible, report.md / report.html / logs / charts there.
# Also: the llama-bench mode's --json line (scripts use it) and -o csv/jsonl, and bad options.
. tests/lib.sh
CHECK="$(dirname "$ANVIL")/tests/bench_check"
[ -x "$CHECK" ] || { echo "FAIL: $CHECK not built"; exit 1; }
export HOME="$AV_TMP/home"
mkdir -p "$HOME"
OUT="$AV_TMP/report"
start=$(date +%s)
if "$ANVIL" bench --quick --quiet --out "$OUT" 2> "$AV_TMP/bench.err"; then ok "anvil bench --quick ($(( $(date +%s) - start ))s)"
else bad "anvil bench --quick failed: $(tail -5 "$AV_TMP/bench.err")"; fi
grep -q '^\[bench\] (6/6) llama: starting' "$AV_TMP/bench.err" && grep -q 'left' "$AV_TMP/bench.err" && ok "progress lines" || bad "progress lines missing"
CHARTS=0
command -v gnuplot > /dev/null 2>&1 && CHARTS=4
"$CHECK" "$OUT" $CHARTS && ok "summary.json checks" || bad "summary.json checks"
grep -q 'weights: random' "$OUT/report.md" && ok "report says the weights are random" || bad "report lacks the random-weights note"
grep -q '<svg' "$OUT/report.html" || [ $CHARTS = 0 ] && ok "charts inlined in report.html" || bad "no inline SVG in report.html"
! grep -q 'src="http' "$OUT/report.html" && ok "report.html needs no network" || bad "report.html loads something"
# --compare against itself: a change column, no regression
"$ANVIL" bench --quick --quiet --suite llama --out "$AV_TMP/r2" --compare "$OUT/summary.json" 2> /dev/null && grep -q '^## Comparison with' "$AV_TMP/r2/report.md" \
  && ok "--compare adds the comparison" || bad "--compare"
# llama-bench mode
M="$HOME/.cache/anvil/bench-quick-bf16"
"$ANVIL" bench --model "$M" -p 16 -n 4 -r 1 --json 2> /dev/null | grep -q '"tg_tps"' && ok "--json line" || bad "--json line"
"$ANVIL" bench --model "$M" -p 16 -n 4 -r 2 -o csv 2> /dev/null | head -1 | grep -q '^build_commit,.*,avg_ts,stddev_ts$' && ok "-o csv header" || bad "-o csv"
[ "$("$ANVIL" bench --model "$M" -p 16 -n 4 -r 2 -o jsonl 2> /dev/null | grep -c '"avg_ts"')" = 2 ] && ok "-o jsonl: 2 rows" || bad "-o jsonl"
expect_error "unknown suite" "unknown suite 'nope'" "$ANVIL" bench --suite nope --out "$AV_TMP/x"
expect_error "bad output format" "output must be md" "$ANVIL" bench --model "$M" -o xml
finish
