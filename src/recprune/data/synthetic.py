"""A synthetic interaction log with learnable sequential structure, split like the real data.

The generative story (all vectorised over users, one numpy step per sequence position):

* items belong to ``n_clusters`` latent genres and have a Zipf-like popularity
  (``weight ~ 1 / rank ** zipf_a`` with ranks shuffled over items);
* every item has a "sequel": another item of its genre;
* a user has a Dirichlet mix over genres and a length ``>= 1`` drawn from a geometric distribution
  with mean ``mean_length`` (before repeated items are removed: a user meets an item once, as in
  the published Games data, so the mean ends up about 20% lower);
* the first item comes from a genre of the user's mix; then, at each step, with probability
  ``P_SEQUEL`` the user takes the previous item's sequel, else with ``P_STAY`` an item of the
  previous item's genre, else an item of a genre drawn from their mix (inside a genre, by
  popularity);
* users start at a random time in the first 70% of a five-year window and spread their
  interactions over the rest of it (global integer timestamps).

The log then goes through the *same* :func:`recprune.data.raw_log.split_log` as real logs. Two
small repairs before that keep the requested sizes: a user whose first interaction would fall
after the training period gets it moved into the training period, and an item that would never
occur in the training period replaces one interaction of a frequent item there. So the result
has exactly ``n_users`` users and ``n_items`` items unless the log is too small to hold every
item in its training period.

Titles are readable ("Crimson Legends 3 - PS4"), unique, except ``duplicate_titles`` items that
copy another item's title and ``missing_titles`` items that have none.
"""

from __future__ import annotations

import numpy as np

from recprune.data.dataset import InteractionDataset
from recprune.data.raw_log import DEFAULT_SPLIT, check_split, split_bounds, split_log
from recprune.errors import ConfigError

P_SEQUEL = 0.15
P_STAY = 0.55
T0 = 1_388_534_400  # 2014-01-01 UTC
SPAN = 5 * 365 * 86_400

ADJECTIVES = [
    "Crimson", "Shadow", "Iron", "Silent", "Eternal", "Frozen", "Golden", "Lost", "Savage",
    "Hidden", "Burning", "Cosmic", "Dark", "Wild", "Neon", "Ancient", "Broken", "Royal",
    "Electric", "Mystic", "Steel", "Turbo", "Super", "Final", "Hyper", "Phantom", "Rogue",
    "Galactic", "Infinite", "Sacred",
]
NOUNS = [
    "Legends", "Knights", "Racers", "Odyssey", "Quest", "Warfare", "Kingdom", "Arena", "Saga",
    "Frontier", "Tactics", "Chronicles", "Heroes", "Dungeon", "Empire", "Rally", "Squad",
    "Horizon", "Realms", "Strikers", "Outlaws", "Galaxy", "Titans", "Ninjas", "Pirates",
    "Dragons", "Soldiers", "Circuit", "Tournament", "Voyage",
]
NUMERALS = ["", " 2", " 3", " 4", " II", " Deluxe", " Remastered"]
PLATFORMS = ["PC", "PS4", "PS3", "Xbox 360", "Xbox One", "Nintendo Switch", "Wii U",
             "Nintendo 3DS"]


def _titles(rng: np.random.Generator, n_items: int) -> list[str]:
    """``n_items`` distinct readable titles."""
    na, nn, nr, npl = len(ADJECTIVES), len(NOUNS), len(NUMERALS), len(PLATFORMS)
    space = na * nn * nr * npl
    if n_items <= space:
        combo = rng.choice(space, size=n_items, replace=False)
        vol = np.zeros(n_items, dtype=np.int64)
    else:
        perm = rng.permutation(n_items)
        combo, vol = perm % space, perm // space
    a, rest = np.divmod(combo, nn * nr * npl)
    b, rest = np.divmod(rest, nr * npl)
    r, pl = np.divmod(rest, npl)
    return [f"{ADJECTIVES[a[k]]} {NOUNS[b[k]]}{NUMERALS[r[k]]}"
            f"{f' Vol. {vol[k] + 1}' if vol[k] else ''} - {PLATFORMS[pl[k]]}"
            for k in range(n_items)]


def make_synthetic(n_users: int = 2000, n_items: int = 500, *, mean_length: float = 8.0,
                   n_clusters: int = 10, zipf_a: float = 1.1, missing_titles: int = 2,
                   duplicate_titles: int = 5, seed: int = 0, name: str = "synthetic",
                   split: tuple[float, float, float] = DEFAULT_SPLIT) -> InteractionDataset:
    """Generate a synthetic dataset (deterministic for a ``seed``); see the module docstring.

    ``meta["item_cluster"][i]`` is item ``i``'s latent genre (``-1`` at index 0) and
    ``meta["item_sequel"][i]`` its sequel item (0 where the sequel is not an item of the result).
    """
    if int(n_users) < 1 or int(n_items) < 1:
        raise ConfigError(f"n_users and n_items must be >= 1, got {n_users} and {n_items}")
    if int(n_clusters) < 1:
        raise ConfigError(f"n_clusters must be >= 1, got {n_clusters}")
    if not mean_length >= 1.0:
        raise ConfigError(f"mean_length must be >= 1, got {mean_length}")
    if not zipf_a >= 0.0:
        raise ConfigError(f"zipf_a must be >= 0, got {zipf_a}")
    if missing_titles < 0 or duplicate_titles < 0 or \
            missing_titles + 2 * duplicate_titles > n_items:
        raise ConfigError(f"need 0 <= missing_titles + 2 * duplicate_titles <= n_items, got "
                          f"{missing_titles} + 2 * {duplicate_titles} with {n_items} items")
    fracs = check_split(split)
    n_users, n_items = int(n_users), int(n_items)
    n_clusters = min(int(n_clusters), n_items)  # at most one genre per item
    rng = np.random.default_rng(seed)

    # --- items: genre, popularity, per-genre sampling table, sequel --------------------------
    cluster = rng.permutation(n_items) % n_clusters  # every genre non-empty
    pop = 1.0 / (rng.permutation(n_items) + 1.0) ** zipf_a
    by_cluster = np.lexsort((-pop, cluster))  # items grouped by genre, popular first
    c_sorted = cluster[by_cluster]
    w = pop[by_cluster]
    c_start = np.searchsorted(c_sorted, np.arange(n_clusters))
    c_size = np.bincount(cluster, minlength=n_clusters)
    cum = np.cumsum(w)
    before = np.concatenate(([0.0], cum))[c_start][c_sorted]  # mass before each item's genre
    total = np.add.reduceat(w, c_start)[c_sorted]
    key = c_sorted + (cum - before) / total  # in (c, c + 1] for genre c, increasing overall
    key[c_start + c_size - 1] = np.arange(n_clusters) + 1.0  # exact genre ends

    def sample_in(c: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(key, c + rng.random(len(c)), side="right")
        pos = np.minimum(pos, c_start[c] + c_size[c] - 1)
        return by_cluster[pos]

    # sequel: another item of the same genre (itself only in a one-item genre)
    rank_in = np.empty(n_items, dtype=np.int64)
    rank_in[by_cluster] = np.arange(n_items) - c_start[c_sorted]
    size = c_size[cluster]
    shift = rng.integers(1, np.maximum(size, 2))
    sequel = by_cluster[c_start[cluster] + (rank_in + shift) % size]

    # --- users: genre mix and lengths -------------------------------------------------------
    mix = np.cumsum(rng.dirichlet(np.full(n_clusters, 0.5), size=n_users), axis=1)
    mix[:, -1] = 1.0
    lengths = np.minimum(rng.geometric(1.0 / mean_length, size=n_users),
                         max(1, int(40 * mean_length)))
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    n = int(indptr[-1])
    seq = np.empty(n, dtype=np.int64)

    def user_genre(u: np.ndarray) -> np.ndarray:
        return (mix[u] < rng.random(len(u))[:, None]).sum(axis=1)

    active = np.arange(n_users)
    prev = sample_in(user_genre(active))
    seq[indptr[:-1]] = prev
    for j in range(1, int(lengths.max())):
        still = lengths[active] > j
        active, prev = active[still], prev[still]
        r = rng.random(len(active))
        genre = np.where(r < P_SEQUEL + P_STAY, cluster[prev], user_genre(active))
        nxt = sample_in(genre)
        again = nxt == prev  # one redraw: immediate repeats are rare in real logs
        nxt[again] = sample_in(genre[again])
        nxt = np.where(r < P_SEQUEL, sequel[prev], nxt)
        seq[indptr[active] + j] = nxt
        prev = nxt

    # a user interacts with an item once (as in the published Games data): keep first visits
    rows = np.repeat(np.arange(n_users), lengths)
    _, first_visit = np.unique(rows * n_items + seq, return_index=True)
    keep = np.zeros(n, dtype=bool)
    keep[first_visit] = True
    seq, rows = seq[keep], rows[keep]
    lengths = np.bincount(rows, minlength=n_users)
    np.cumsum(lengths, out=indptr[1:])
    n = int(indptr[-1])

    # --- global timestamps: users start in the first 70%, spread over the rest --------------
    start = rng.random(n_users) * 0.7
    span = (1.0 - start) * rng.uniform(0.05, 1.0, size=n_users)
    frac = rng.random(n)
    frac[indptr[:-1]] = 0.0
    frac = frac[np.lexsort((frac, rows))]  # sorted within each user (rows stay grouped)
    ts = T0 + ((start[rows] + span[rows] * frac) * SPAN).astype(np.int64)

    # --- repairs: every user and every item in the training period --------------------------
    n_train, _ = split_bounds(n, fracs)
    firsts = indptr[:-1]

    def train_mask() -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(ts, kind="stable")  # the same stable sort as split_log
        mask = np.zeros(n, dtype=bool)
        mask[order[:n_train]] = True
        return mask, order

    for _ in range(50):
        in_train, order = train_mask()
        late = np.flatnonzero(~in_train[firsts])
        if not len(late):
            break
        t_end = ts[order[max(n_train - 1, 0)]]
        ts[firsts[late]] = T0 + (rng.random(len(late)) * (t_end - T0) * 0.95).astype(np.int64)
    in_train, _ = train_mask()
    for _ in range(50):
        counts = np.bincount(seq[in_train], minlength=n_items)
        absent = np.flatnonzero(counts == 0)
        if not len(absent):
            break
        cand = np.flatnonzero(in_train & (counts[seq] >= 2) & ~np.isin(np.arange(n), firsts))
        if not len(cand):
            cand = np.flatnonzero(in_train & (counts[seq] >= 2))
        if not len(cand):
            break  # too few training interactions to hold every item
        # prefer interactions of frequent items, so no item loses its last training occurrence
        cand = cand[np.argsort(-counts[seq[cand]], kind="stable")][:max(len(absent) * 4, 1)]
        take = rng.choice(cand, size=min(len(absent), len(cand)), replace=False)
        seq[take] = absent[:len(take)]

    # --- titles -------------------------------------------------------------------------------
    titles = np.array(_titles(rng, n_items), dtype=object)
    present = np.flatnonzero(np.bincount(seq[in_train], minlength=n_items) > 0)
    pick = rng.permutation(present)
    missing = pick[:missing_titles]
    dups = pick[missing_titles:missing_titles + duplicate_titles]
    sources = pick[missing_titles + duplicate_titles:missing_titles + 2 * duplicate_titles]
    titles[dups[:len(sources)]] = titles[sources[:len(dups)]]
    titles[missing] = None

    raw_ids = np.arange(1, n_items + 1, dtype=np.int64)
    ds = split_log(rows + 1, seq + 1, ts, split=fracs,
                   titles=dict(zip(raw_ids.tolist(), titles.tolist())), name=name,
                   source=f"synthetic:{n_users}",
                   meta={"format": "synthetic",
                         "generator": {"n_users": n_users, "n_items": n_items,
                                       "mean_length": mean_length, "n_clusters": n_clusters,
                                       "zipf_a": zipf_a, "missing_titles": missing_titles,
                                       "duplicate_titles": duplicate_titles, "seed": seed,
                                       "p_sequel": P_SEQUEL, "p_stay": P_STAY}})
    raw = ds.item_raw_ids[1:].astype(np.int64) - 1  # generator item of each dataset item
    new_of_raw = np.zeros(n_items, dtype=np.int64)
    new_of_raw[raw] = np.arange(1, ds.n_items + 1)
    ds.meta["item_cluster"] = np.concatenate(([-1], cluster[raw])).astype(np.int64)
    ds.meta["item_sequel"] = np.concatenate(([0], new_of_raw[sequel[raw]]))
    return ds
