#!/usr/bin/env bash
# Long benchmark runs outlive a session; their expensive, small intermediate state is committed
# under benchmarks/results/state/ (a mirror of paths under runs/) so that a new machine continues
# them instead of starting over.
#   benchmarks/state.sh save      copy the listed small files from runs/ into the mirror
#   benchmarks/state.sh restore   copy the mirror back into runs/ (never overwrites a file)
set -euo pipefail
cd "$(dirname "$0")/.."
MIRROR=benchmarks/results/state
# what is worth keeping: evaluation chunks and finished evaluations, the grid's trained
# surrogate, its small score arrays and finished selections, LoRA fit checkpoints (a few MB)
PATTERNS=(
  "bench_llm/*/*/eval/partial/*/chunk_*.npz"
  "bench_llm/*/*/eval/*.json" "bench_llm/*/*/eval/*.csv" "bench_llm/*/*/eval/*.jsonl"
  "bench_llm/*/*/eval/ranked.npy"
  "bench_llm/bigrec/*/finetune/checkpoints/**"
  "bench-tiger/cache/surrogate.pt"
  "bench-tiger/cache/scores/grand.*" "bench-tiger/cache/scores/el2n.*"
  "bench-tiger/cache/scores/influence.*" "bench-tiger/cache/scores/effort/**"
  "bench-tiger/cache/scores/effort.*"
  "bench-tiger/cells/*/*/*/select/done.json"
)
case "${1:-}" in
  save)
    shopt -s globstar nullglob
    n=0
    for p in "${PATTERNS[@]}"; do
      for f in runs/$p; do
        [ -f "$f" ] || continue
        dest="$MIRROR/${f#runs/}"
        mkdir -p "$(dirname "$dest")"
        cp -p "$f" "$dest"; n=$((n + 1))
      done
    done
    echo "saved $n files into $MIRROR ($(du -sh "$MIRROR" | cut -f1))" ;;
  restore)
    [ -d "$MIRROR" ] || { echo "nothing to restore"; exit 0; }
    mkdir -p runs
    cp -rpn "$MIRROR"/. runs/
    echo "restored $MIRROR into runs/" ;;
  *) echo "usage: $0 save|restore" >&2; exit 2 ;;
esac
