#!/usr/bin/env bash
# Long benchmark runs outlive a session; their expensive, small intermediate state is committed
# under benchmarks/results/state/ (a mirror of paths under runs/) so that a new machine continues
# them instead of starting over.
#   benchmarks/state.sh save      copy the listed small files from runs/ into the mirror
#   benchmarks/state.sh restore   copy the mirror back into runs/ (never overwrites a file)
set -euo pipefail
cd "$(dirname "$0")/.."
MIRROR=benchmarks/results/state
# what is worth keeping and small (every file well under 2 MB): evaluation chunks and finished
# evaluations, the grid's score arrays and finished selections. Model checkpoints (surrogate,
# LoRA optimiser state) are larger and are recomputed instead.
PATTERNS=(
  "bench_llm/*/*/eval/partial/*/chunk_*.npz"
  "bench_llm/*/*/eval/*.json" "bench_llm/*/*/eval/*.csv" "bench_llm/*/*/eval/*.jsonl"
  "bench_llm/*/*/eval/ranked.npy"
  "bench-tiger/cache/scores/grand.*" "bench-tiger/cache/scores/el2n.*"
  "bench-tiger/cache/scores/influence.*" "bench-tiger/cache/scores/effort/**"
  "bench-tiger/cache/scores/effort.*"
  "bench-tiger/cells/*/*/*/select/done.json"
)
case "${1:-}" in
  save)
    shopt -s globstar nullglob
    if [ -d "$MIRROR" ]; then
      # the mirror becomes an exact copy of what runs/ holds now (stale checkpoints go), but
      # only on a machine that restored it first: otherwise nothing here would be kept
      restored=0
      while IFS= read -r f; do
        [ -e "runs/${f#$MIRROR/}" ] && { restored=1; break; }
      done < <(find "$MIRROR" -type f)
      if [ "$restored" = 0 ] && [ -n "$(find "$MIRROR" -type f | head -1)" ]; then
        echo "runs/ holds none of the saved state: run '$0 restore' first" >&2; exit 2
      fi
      rm -rf "$MIRROR"
    fi
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
