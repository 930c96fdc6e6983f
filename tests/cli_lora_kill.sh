#!/bin/sh
# `anvil lora` killed with SIGKILL at random moments (checkpoints are written every iteration, so
# many kills land inside a checkpoint write) and resumed each time with --resume-adapter-file from
# its latest checkpoint must end with the byte-identical adapter (and training state) of an
# uninterrupted run. One kill here; AV_TEST_LONG=1 (make test-long) kills 20 times. Also a checkpoint
# taken inside a gradient accumulation window (it holds the gradients so far) resumes exactly.
. tests/lib.sh
need_fixtures
M="$FX/tiny-llama"
D="$AV_DATA/quotes"
W="$AV_TMP/kill"
mkdir -p "$W"
ITERS=16; KILLS=1
[ "${AV_TEST_LONG:-0}" = 1 ] && ITERS=40 && KILLS=20
L="$ANVIL lora --model $M --train --data $D --learning-rate 1e-2 --num-layers -1 --batch-size 2 --max-seq-length 48 \
  --steps-per-report 4 --steps-per-eval 8 --val-batches 2 --save-every 1 --threads 1 --seed 5 --iters $ITERS"

$L --adapter-path "$W/u" > "$W/u.log" 2>&1 || { bad "uninterrupted run failed: $(tail -3 "$W/u.log")"; finish; }
# how long a whole run takes (ms), to spread the kills over it
t0=$(date +%s%N); $L --adapter-path "$W/t" > /dev/null 2>&1; t1=$(date +%s%N)
span=$(( (t1 - t0) / 1000000 )); [ $span -lt 100 ] && span=100

# one attempt: resume from the latest checkpoint when it has its training state, else start afresh
# (exec: in a background subshell, $! is then anvil itself, which the kill must hit)
attempt() { # log
  if [ -f "$W/k/adapters.state.safetensors" ]; then
    exec $L --adapter-path "$W/k" --resume-adapter-file "$W/k/adapters.safetensors" > "$1" 2>&1
  else
    exec $L --adapter-path "$W/k" > "$1" 2>&1
  fi
}
seed=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
kills=0; done_=0; n=0
while [ $kills -lt $KILLS ] && [ $n -lt $((KILLS * 3)) ]; do
  n=$((n+1))
  ms=$(awk -v s="$seed" -v n="$n" -v span="$span" -v k="$KILLS" 'BEGIN{srand(s + n); printf "%d", 50 + rand() * span * 1.4 / k}')
  ( attempt "$W/k$n.log" ) & pid=$!
  sleep "$(awk -v ms="$ms" 'BEGIN{printf "%.3f", ms / 1000}')"
  if kill -9 $pid 2>/dev/null; then wait $pid 2>/dev/null; kills=$((kills+1))
    echo "killed attempt $n after ${ms} ms ($(grep -o '^Resuming from iteration [0-9]*' "$W/k$n.log"); $(grep -c '^Iter [0-9]*: Saved' "$W/k$n.log") checkpoints)"
  else wait $pid; rc=$?; echo "attempt $n finished (rc=$rc) before the kill at ${ms} ms"
    if [ $rc -ne 0 ] && ! grep -q 'already at iteration' "$W/k$n.log"; then bad "attempt $n failed: $(tail -2 "$W/k$n.log")"; finish; fi
    [ $kills -gt 0 ] && { done_=1; break; }
    rm -rf "$W/k" # finished before any kill: start over
  fi
done
[ $kills -ge 1 ] || bad "no attempt was killed (runs too short?)"
# finish the run (unless the last attempt already did)
if [ $done_ -eq 0 ]; then
  ( attempt "$W/final.log" ); rc=$?
  [ $rc -eq 0 ] || grep -q 'already at iteration' "$W/final.log" || bad "final resume failed: $(tail -3 "$W/final.log")"
fi
echo "$kills kills (seed $seed)"
cmp -s "$W/u/adapters.safetensors" "$W/k/adapters.safetensors" && ok "$kills kills: final adapter byte-identical" \
  || bad "$kills kills: final adapter differs (seed $seed)"
cmp -s "$W/u/adapters.state.safetensors" "$W/k/adapters.state.safetensors" && ok "$kills kills: final training state byte-identical" \
  || bad "$kills kills: final training state differs (seed $seed)"
cmp -s "$W/u/best_adapters.safetensors" "$W/k/best_adapters.safetensors" && ok "best adapter byte-identical" \
  || bad "best adapter differs (seed $seed)"

# checkpoint at iteration 3 of 2-batch accumulation windows: resumed, the same final adapter
G="$ANVIL lora --model $M --train --data $D --learning-rate 1e-2 --num-layers -1 --batch-size 2 --max-seq-length 48 \
  --steps-per-report 5 --steps-per-eval 100 --val-batches 1 --save-every 3 --grad-accumulation-steps 2 --threads 1 --seed 3 --iters 12"
$G --adapter-path "$W/ga" > "$W/ga.log" 2>&1 || bad "accumulation run failed: $(tail -2 "$W/ga.log")"
$G --adapter-path "$W/ga2" --resume-adapter-file "$W/ga/0000003_adapters.safetensors" > "$W/ga2.log" 2>&1 || bad "accumulation resume failed"
grep -q '^Resuming from iteration 3 ' "$W/ga2.log" && cmp -s "$W/ga/adapters.safetensors" "$W/ga2/adapters.safetensors" \
  && ok "resumed inside an accumulation window: same final adapter" || bad "resume inside an accumulation window differs"
finish
