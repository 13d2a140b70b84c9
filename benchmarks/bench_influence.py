"""Influence-stage benchmark on Games: per-sample gradients, LiSSA, all-sample scores.

One run, side by side:
  (1) per-sample gradient work for N samples: a Python loop of single-sample backward passes
      (``loop``: padded to max_len with the loss at every position, as the reference;
      ``loop-c``: cropped, logits at target positions only) vs batched ``vmap(grad)`` vs batched
      forward-mode ``jvp`` (score = grad . x), for the paper's parameter set (all) and the
      reference's single 64x64 layer;
  (2) LiSSA, 5,000 steps of one sample (reference: ~57 s on this kind of machine), with its
      convergence report and exact residual;
  (3) the influence score of all 49,156 samples (reference: ~172 s for the per-sample loop);
  (4) CG on a subsampled Hessian for the same system, and the rank agreement with LiSSA.

    python benchmarks/bench_influence.py --checkpoint benchmarks/results/sasrec_games.pt
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from recprune.data import load_dataset
from recprune.scoring import InfluenceConfig, SurrogateObjective, influence_scores
from recprune.surrogate import build_samples, load_surrogate
from recprune.surrogate.sasrec import sequence_losses


def loop_grads(obj: SurrogateObjective, rows: np.ndarray, padded: bool) -> torch.Tensor:
    """The baseline: one backward pass per sample. ``padded``: as the reference, the sample is
    left-padded to max_len and the loss computed at every position (masked); otherwise cropped
    to its own length with logits only at target positions (an optimised loop)."""
    model = obj.model
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(True)
    out = []
    for r in rows:
        model.zero_grad(set_to_none=True)
        if padded:
            seq, tgt = obj.samples.seq[[r]], obj.samples.tgt[[r]]
        else:
            seq, tgt = obj.samples.batch(np.array([r]))
        loss = sequence_losses(model, seq, tgt, loss=obj.loss, compact=not padded).sum() / obj.norm
        loss.backward()
        out.append(torch.cat([params[n].grad.reshape(-1) for n in obj.names]))
    return torch.stack(out)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="../shared/data/games")
    ap.add_argument("--checkpoint", required=True, help="trained surrogate (bench_surrogate.py)")
    ap.add_argument("--n", type=int, default=512, help="samples for the per-sample comparison")
    ap.add_argument("--lissa-depth", type=int, default=5000)
    ap.add_argument("--skip-full", action="store_true", help="skip (2)-(4)")
    ap.add_argument("--cg-samples", type=int, default=4096)
    a = ap.parse_args()
    ds = load_dataset(a.data)
    sur = load_surrogate(a.checkpoint, ds)
    samples = build_samples(ds, sur.model.cfg.max_len)
    rng = np.random.default_rng(0)
    print(f"{ds.name}: {ds.n_users} samples; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}\n")

    print(f"(1) per-sample gradients, {a.n} random samples with a target")
    print(f"{'params':>10} {'dim':>9} {'method':>6} {'seconds':>8} {'ms/sample':>10} "
          f"{'speed-up':>9} {'max rel diff':>12}")
    for spec in ("all", "reference"):
        obj = SurrogateObjective(sur.model, samples, params=spec, loss=sur.config.loss)
        rows = np.sort(rng.choice(obj.active_rows, a.n, replace=False))
        x = torch.randn(obj.dim)
        g_loop, t_loop = timed(lambda: loop_grads(obj, rows, padded=True))
        ref = (g_loop @ x).numpy()
        g_crop, t_crop = timed(lambda: loop_grads(obj, rows, padded=False))
        d_crop = (g_crop @ x).numpy()
        d_vmap, t_vmap = timed(lambda: obj.per_sample_dot(
            x, rows, method="vmap", batch_size=64 if spec == "all" else 256))
        d_jvp, t_jvp = timed(lambda: obj.per_sample_dot(x, rows, method="jvp", batch_size=256))
        scale = np.abs(ref).max()
        for name, t, d in (("loop", t_loop, ref), ("loop-c", t_crop, d_crop),
                           ("vmap", t_vmap, d_vmap), ("jvp", t_jvp, d_jvp)):
            diff = np.abs(d - ref).max() / scale
            print(f"{spec:>10} {obj.dim:>9} {name:>6} {t:>8.2f} {1000 * t / a.n:>10.2f} "
                  f"{t_loop / t:>8.1f}x {diff:>12.1e}", flush=True)
    if a.skip_full:
        return

    print(f"\n(2)+(3) influence of all {ds.n_users} samples, params=all, LiSSA depth "
          f"{a.lissa_depth} (reference: 5,000 steps ~57 s; per-sample loop ~172 s)")
    res = influence_scores(sur.model, samples, InfluenceConfig(
        params="all", solver="lissa", solver_options={"depth": a.lissa_depth}),
        loss=sur.config.loss, show_progress=False)
    rep = res.report
    s = res.scores
    print(f"mean gradient {res.seconds['mean_grad']:.1f} s | LiSSA {res.seconds['ihvp']:.1f} s "
          f"(incl. residual check) | per-sample scores {res.seconds['per_sample']:.1f} s | "
          f"total {sum(res.seconds.values()):.1f} s")
    print(f"LiSSA: effective damping {rep.damping}, converged {rep.converged}, exact relative "
          f"residual {rep.residual:.3f}, last trace {rep.trace[-1]}")
    print(f"scores: {int((s == 0).sum())} exactly 0 (no surrogate target), {int((s < 0).sum())} "
          f"negative, {int((s > 0).sum())} positive; range [{s.min():.3g}, {s.max():.3g}]")

    print(f"\n(4) the same with CG (damping 0.25, Hessian of {a.cg_samples} sampled users), and "
          "how far LiSSA's ranking is from it")
    res_cg = influence_scores(sur.model, samples, InfluenceConfig(
        params="all", solver="cg", solver_options={"damping": 0.25, "tol": 1e-3, "max_iter": 100,
                                                   "hessian_samples": a.cg_samples}),
        loss=sur.config.loss, show_progress=False)
    from scipy.stats import spearmanr

    act = samples.lengths.numpy() > 0
    rho = spearmanr(res.scores[act], res_cg.scores[act]).statistic
    cos = float(res.ihvp @ res_cg.ihvp / (res.ihvp.norm() * res_cg.ihvp.norm()))
    print(f"CG: {res_cg.report.iterations} iterations, residual {res_cg.report.residual:.1e}, "
          f"converged {res_cg.report.converged}, {res_cg.seconds['ihvp']:.1f} s; "
          f"cosine(x_LiSSA, x_CG) {cos:.3f}; Spearman of the influence scores {rho:.3f}")


if __name__ == "__main__":
    main()
