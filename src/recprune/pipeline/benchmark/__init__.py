"""``recprune benchmark``: the DEALRec Table-2 protocol as one resumable grid.

For every budget, selection method and seed, the selection is made on a fixed candidate pool
(all training users, or a seeded ``pool`` of them) and every backend is fine-tuned on it and
evaluated on a fixed set of test users (all, or a seeded ``eval_users`` subset). Run directory::

    OUT/config.json                 the benchmark configuration
    OUT/cache/                      surrogate.pt and scores/: computed once, shared by all cells
    OUT/cells/b<budget>/<method>/s<seed>/select/            the selection (recprune select)
    OUT/cells/b<budget>/<method>/s<seed>/<backend>/finetune/  fine-tuned model
    OUT/cells/b<budget>/<method>/s<seed>/<backend>/eval/      metrics, per-user values
    OUT/cells/b<budget>/<method>/s<seed>/<backend>/cell.json  the finished cell's key + fit summary
    OUT/cells/full/s<seed>/...      method "all": full-data fine-tuning (no selection)
    OUT/cells/pop/eval/             most-popular baseline (with ``popularity``)
    OUT/cells.csv                   one row per finished cell: metrics, wall seconds per stage
    OUT/table.md, table.csv         mean +- std over seeds per method x backend (best in bold)
    OUT/significance.csv            paired tests of every method against the baseline (Random)
    OUT/coverage.csv                what each selection covers (lengths, item popularity)
    OUT/*.png, OUT/report.md        plots and the report that shows them

Every stage reuses a finished result with the same configuration (select: ``select/done.json``;
fine-tune / evaluate: their own keys), so running the same command again continues an
interrupted grid and never recomputes a finished cell; a long fine-tuning or evaluation resumes
from its own checkpoints. Selections, models and evaluations depend only on their cell's
configuration, so cells may be added (methods, seeds, budgets) to an existing run directory.
A finished cell is recognised by ``cell.json`` + ``eval/`` alone, without its fine-tuned model: the
small result files can be copied to another machine and the grid continued there.

Several processes may work on one run directory at once: each cell's selection and each
(cell, backend) fine-tune + evaluation holds a lock (``.lock``, an ``flock`` the system releases
when its process dies) while it runs, and a process that meets a locked cell skips it. So the
same command started twice on one machine shares the grid dynamically (``--shard i/n`` splits it
statically instead); each run's tables hold the cells finished when it ends, and the last run to
end collects them all. Cells whose fine-tuning was interrupted (checkpoints, no ``cell.json``) are
taken first, so each process resumes half-done work before it starts new cells. The shared
score cache is not locked: make it once first (``selections_only``) before starting processes
in parallel on a fresh directory.

The significance test pairs users: each method's per-user metric is averaged over its seeds
and compared with the baseline's per-user average on the same test users (paired t-test and
Wilcoxon signed-rank, see :func:`recprune.evaluation.paired_test`). That test holds the seeds
fixed: it asks whether *these* selections differ on the population of test users. Whether
another draw of seeds would order the methods the same way is a different question, answered
(with little power at 2-3 seeds) by ``p_seeds``, Welch's t-test on the per-seed means
(:func:`seed_test`); it needs at least two seeds on each side.
"""

from recprune.pipeline.benchmark.config import (ABLATIONS, ALIASES, FULL, PAPER_METHODS,
                                                BenchmarkConfig, expand_methods, resolve_budget)
from recprune.pipeline.benchmark.grid import (BenchmarkResult, Cell, changed_settings,
                                              run_benchmark)
from recprune.pipeline.benchmark.report import (coverage_stats, markdown_table, pool_scores,
                                                significance, write_outputs)

__all__ = ["ABLATIONS", "ALIASES", "FULL", "PAPER_METHODS", "BenchmarkConfig", "BenchmarkResult",
           "Cell", "changed_settings", "coverage_stats", "expand_methods", "markdown_table",
           "pool_scores", "resolve_budget", "run_benchmark", "significance", "write_outputs"]
