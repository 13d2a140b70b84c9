"""Same selections before and after a change: every selection method run by two versions of the code.

Runs ``recprune select`` for each method with the code at a reference git revision (checked out
in a temporary worktree and put first on ``PYTHONPATH``) and with the working tree, each side
sharing one ``--cache-dir`` across its methods, then compares ``selected_users.txt`` and
``scores.csv`` byte for byte. Both sides run on this machine in one invocation, so float
results are comparable (score values differ across CPU kinds, selections rarely do).

    python benchmarks/behaviour_check.py --ref 112e1a8                      # synthetic:500
    python benchmarks/behaviour_check.py --ref 112e1a8 --data ../shared/data/games \
        --pool 2000 --budget 64 --extra="--lora-layers last" --out runs/behaviour-games

A finished side is reused when its directory exists (``--out``), so the reference can be computed
once and compared with several later states of the working tree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("random", "greedy", "recent", "grand", "el2n", "ccs", "tfdcon", "recranker",
           "goracs", "dealrec", "dealrec_no_influence", "dealrec_no_effort", "dealrec_greedy")
FILES = ("selected_users.txt", "scores.csv")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "missing"


def run_side(label: str, src: Path, out: Path, args: argparse.Namespace) -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    res: dict[str, dict] = {}
    for m in args.methods:
        run = out / label / m
        if not (run / "selected_users.txt").exists():
            cmd = [sys.executable, "-m", "recprune.cli", "select", "--data", args.data,
                   "--budget", str(args.budget), "--method", m, "--out", str(run),
                   "--cache-dir", str(out / label / "cache"), "--quiet"]
            if args.pool:
                cmd += ["--pool", str(args.pool)]
            cmd += shlex.split(args.extra)
            t = time.perf_counter()
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if p.returncode != 0:
                print(f"{label} {m}: exit {p.returncode}\n{p.stderr[-2000:]}", file=sys.stderr)
            print(f"{label:9s} {m:22s} {time.perf_counter() - t:7.1f} s", file=sys.stderr)
        res[m] = {f: sha(run / f) for f in FILES}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", required=True, help="git revision of the reference code")
    ap.add_argument("--data", default="synthetic:500")
    ap.add_argument("--budget", type=int, default=32)
    ap.add_argument("--pool", type=int, default=None)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--extra", default="", help="further select flags for both sides")
    ap.add_argument("--out", default="runs/behaviour")
    ap.add_argument("--json", default=None, help="write the comparison to this file")
    args = ap.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    out = Path(args.out).resolve()
    ref_src = out / "ref-src"
    if not ref_src.exists():
        tree = out / "ref-tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree),
                        args.ref], check=True, capture_output=True)
        ref_src.parent.mkdir(parents=True, exist_ok=True)
        ref_src.symlink_to(tree / "src")
    ref = run_side("reference", ref_src, out, args)
    new = run_side("current", ROOT / "src", out, args)
    rows, same = [], True
    print(f"\nbehaviour check: {args.data}, budget {args.budget}, pool {args.pool}, "
          f"reference {args.ref}\n")
    print(f"| method | {' | '.join(FILES)} |\n|---|{'---|' * len(FILES)}")
    for m in args.methods:
        cells = []
        for f in FILES:
            ok = ref[m][f] == new[m][f] and ref[m][f] != "missing"
            same &= ok
            cells.append("same" if ok else f"DIFFERS ({ref[m][f]} vs {new[m][f]})")
        rows.append({"method": m, **{f: {"reference": ref[m][f], "current": new[m][f]}
                                     for f in FILES}})
        print(f"| {m} | {' | '.join(cells)} |")
    print(f"\n{'all identical' if same else 'SOME OUTPUTS DIFFER'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "budget": args.budget,
                                               "pool": args.pool, "reference": args.ref,
                                               "identical": same, "methods": rows}, indent=2))
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
