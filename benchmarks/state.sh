#!/usr/bin/env bash
# Long benchmark runs outlive a session; their expensive, small intermediate state is committed
# under benchmarks/results/state/ (a mirror of paths under runs/) so that a new machine continues
# them instead of starting over.
#   benchmarks/state.sh save      copy the listed small files from runs/ into the mirror
#   benchmarks/state.sh restore   copy the mirror back into runs/ (never overwrites a file)
#   benchmarks/state.sh watch [MINUTES]
#                                 every MINUTES (default 5): when a grid cell or an evaluation has
#                                 finished since the last look, save and commit the mirror (that
#                                 path only; other staged work is left alone), so a session that
#                                 ends without warning loses at most the cells still running
set -euo pipefail
cd "$(dirname "$0")/.."
MIRROR=benchmarks/results/state
# what is worth keeping and small (every file well under 2 MB): evaluation chunks and finished
# evaluations, finished grid cells (cell.json + eval/), the grids' score arrays and selections,
# and each grid's config.json (so a continuation with other cell settings is refused there too).
# Model checkpoints (surrogate, fine-tuned models, optimiser state) are larger and are
# recomputed instead; a finished grid cell does not need its model again (see cell.json).
PATTERNS=(
  "bench_llm/*/*/eval*/partial/*/chunk_*.npz"
  "bench_llm/*/*/eval*/*.json" "bench_llm/*/*/eval*/*.csv" "bench_llm/*/*/eval*/*.jsonl"
  "bench_llm/*/*/eval*/ranked.npy" "bench_llm/*/*/finetune/fit.json"
  "bench-*/config.json" "bench-*/cache/scores/**"
  "bench-*/cells/**/select/done.json" "bench-*/cells/**/select/selected_users.txt"
  "bench-*/cells/*/*/s0/select/scores.csv"
  "bench-*/cells/**/cell.json" "bench-*/cells/**/eval/*.json" "bench-*/cells/**/eval/*.csv"
  "bench-*/cells/**/eval/*.jsonl" "bench-*/cells/**/eval/ranked.npy"
  "bench-*/cells/**/finetune/fit.json"
)
case "${1:-}" in
  save)
    shopt -s globstar nullglob
    if [ -d "$MIRROR" ]; then
      # the mirror becomes an exact copy of what runs/ holds now (stale checkpoints go), but
      # only on a machine that restored it first: otherwise nothing here would be kept
      restored=0
      while IFS= read -r f; do
        t="${f#$MIRROR/}"; [ -e "runs/${t%.gz}" ] && { restored=1; break; }
      done < <(find "$MIRROR" -type f)
      if [ "$restored" = 0 ] && [ -n "$(find "$MIRROR" -type f | head -1)" ]; then
        echo "runs/ holds none of the saved state: run '$0 restore' first" >&2; exit 2
      fi
      rm -rf "$MIRROR"
    fi
    n=0; skipped=0
    for p in "${PATTERNS[@]}"; do
      for f in runs/$p; do
        [ -f "$f" ] || continue
        dest="$MIRROR/${f#runs/}"
        mkdir -p "$(dirname "$dest")"
        case "$f" in
          */select/scores.csv)
            # a selection's score columns (read by the tables and plots): kept gzip-compressed
            gzip -9 -n -c "$f" > "$dest.gz"
            if [ "$(stat -c %s "$dest.gz")" -ge 2000000 ]; then
              rm -f "$dest.gz"; skipped=$((skipped + 1))
            else
              touch -r "$f" "$dest.gz"; n=$((n + 1))
            fi
            continue ;;
        esac
        # other files of 2 MB or more (text embeddings, all-user rankings) are recomputed instead
        if [ "$(stat -c %s "$f")" -ge 2000000 ]; then skipped=$((skipped + 1)); continue; fi
        cp -p "$f" "$dest"; n=$((n + 1))
      done
    done
    echo "saved $n files into $MIRROR ($(du -sh "$MIRROR" | cut -f1)); $skipped files >= 2 MB left out" ;;
  restore)
    [ -d "$MIRROR" ] || { echo "nothing to restore"; exit 0; }
    mkdir -p runs
    while IFS= read -r f; do
      rel="${f#$MIRROR/}"
      case "$rel" in
        *.gz) target="runs/${rel%.gz}"
              [ -e "$target" ] || { mkdir -p "$(dirname "$target")"; gzip -d -c "$f" > "$target.tmp" && mv "$target.tmp" "$target"; } ;;
        *) target="runs/$rel"
           [ -e "$target" ] || { mkdir -p "$(dirname "$target")"; cp -p "$f" "$target"; } ;;
      esac
    done < <(find "$MIRROR" -type f)
    echo "restored $MIRROR into runs/" ;;
  watch)
    minutes="${2:-5}"
    [[ "$minutes" =~ ^[1-9][0-9]*$ ]] || { echo "watch: MINUTES must be a whole number >= 1, got '$minutes'" >&2; exit 2; }
    [ -d runs ] || { echo "watch: no runs/ directory here: start the benchmark jobs (or '$0 restore') first" >&2; exit 2; }
    finished() { find runs -name cell.json -o -path '*/eval*/metrics.json' 2>/dev/null | sort | md5sum; }
    last=$(finished)
    while sleep "$((minutes * 60))"; do
      now=$(finished)
      [ "$now" = "$last" ] && continue
      if bash benchmarks/state.sh save && git add -A "$MIRROR" && \
         { git diff --cached --quiet -- "$MIRROR" || \
           git commit -q -m "benchmark state: cells finished by $(date -u '+%Y-%m-%d %H:%M') UTC" -- "$MIRROR"; }; then
        last=$now; echo "$(date -u '+%F %T') state committed"
      else
        echo "$(date -u '+%F %T') state not committed (will retry)" >&2
      fi
    done ;;
  *) echo "usage: $0 save|restore|watch [MINUTES]" >&2; exit 2 ;;
esac
