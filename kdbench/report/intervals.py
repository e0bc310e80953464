"""Intervals a reviewer accepts: a two-level bootstrap of the difference of a metric between two
cells (training variance and test-set variance), Holm's correction across a table's
comparisons, and a paired t-test over seeds.

Two levels: each replicate draws the seeds with replacement (the training runs), then, for each
drawn seed, the test clusters with replacement (every frame of a drawn cluster comes along). A
cluster is an identity pair where the test videos come in pairs (FF++'s and the embedded
dataset's ``a``, ``b``, ``M/a_b``, ``M/b_a``: see :func:`identity_clusters`), else a video.
The replicate's difference is the mean over its drawn seeds of ``metric(A) - metric(B)`` on
that seed's resampled clusters (A's and B's runs paired by seed). With one seed only the test
level is left.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from kdbench.errors import KdbenchError
from kdbench.report.paired import (
    CHUNK,
    N_BOOT,
    Interval,
    _metric,
    _Videos,
    check_same_frames,
)
from kdbench.train.predictions import Predictions

ALPHA = 0.05
_REAL = re.compile(r"^(\d+)$")
_FAKE = re.compile(r"^(\d+)_(\d+)$")


def identity_clusters(videos: Sequence[str]) -> tuple[np.ndarray, bool]:
    """Each video's cluster index, and whether any pairs were found: videos named FF++-style
    (a real ``a``; a fake ``<manipulation>/a_b``) share a cluster when they share an identity
    (the connected identities: an FF++ split's pairs); any other name is its own cluster."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    keys: list[str] = []
    paired = False
    for name in videos:
        base = str(name).rsplit("/", 1)[-1]
        if (m := _FAKE.match(base)) and "/" in str(name):
            a, b = find("id:" + m.group(1)), find("id:" + m.group(2))
            parent[a] = b
            keys.append("id:" + m.group(1))
            paired = True
        elif m := _REAL.match(base):
            keys.append("id:" + m.group(1))
        else:
            keys.append("video:" + str(name))
    roots = [find(k) for k in keys]
    _, index = np.unique(roots, return_inverse=True)
    return index.astype(int), paired


@dataclass
class Comparison:
    """A - B (mean over the paired seeds of the full-test-set difference), its bootstrap
    replicates and the per-seed differences."""

    diff: float
    replicates: np.ndarray
    per_seed: np.ndarray
    seeds: tuple[int, ...]
    clustered: bool  # resampled by identity pair (else by video)
    n_boot: int
    label: str = ""
    level: float = 1 - ALPHA  # the level its interval is read at (Holm sets it)
    marked: bool = field(default=False)  # Holm: the difference is declared

    def interval(self, level: float | None = None) -> Interval:
        """The percentile interval at ``level`` (default: :attr:`level`)."""
        level = self.level if level is None else level
        values = self.replicates[~np.isnan(self.replicates)]
        tail = 100 * (1 - level) / 2
        lo, hi = (np.percentile(values, [tail, 100 - tail]) if values.size
                  else (math.nan, math.nan))
        return Interval(self.diff, float(lo), float(hi), self.seeds, self.n_boot, level)

    @property
    def p_value(self) -> float:
        """Two-sided bootstrap p-value: twice the smaller share of replicates on one side of 0
        (at least 1 / replicates)."""
        values = self.replicates[~np.isnan(self.replicates)]
        if not values.size:
            return math.nan
        tail = min(np.mean(values <= 0), np.mean(values >= 0))
        return float(min(1.0, max(2 * tail, 1 / values.size)))

    @property
    def t_test(self) -> float | None:
        """The paired t-test's two-sided p over the per-seed differences (3 seeds or more;
        1.0 when they are all equal and zero, 0.0 when equal and not zero)."""
        d = self.per_seed
        if len(d) < 3:
            return None
        sd = float(np.std(d, ddof=1))
        if sd == 0:
            return 1.0 if float(np.mean(d)) == 0 else 0.0
        from scipy import stats

        t = float(np.mean(d)) / (sd / math.sqrt(len(d)))
        return float(2 * stats.t.sf(abs(t), len(d) - 1))

    def text(self, scale: float = 100.0) -> str:
        """``+1.23 [-0.40, +2.85]`` at :attr:`level`."""
        return self.interval().text(scale)

    @property
    def mark(self) -> str:
        return ("↑" if self.diff > 0 else "↓") if self.marked else ""


def two_level_bootstrap(a: dict[int, Predictions], b: dict[int, Predictions], metric: str,
                        n_boot: int = N_BOOT, seed: int = 0, label: str = "") -> Comparison:
    """``metric(A) - metric(B)`` over the seeds both ran, resampled at two levels (seeds, then
    test clusters within each drawn seed); see the module docstring."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise KdbenchError(f"the two cells share no seed (A: {sorted(a)}, B: {sorted(b)}); "
                           "run both with the same --seeds to compare them")
    check_same_frames([a[s] for s in seeds] + [b[s] for s in seeds])
    videos = _Videos(a[seeds[0]])
    cluster_of, clustered = identity_clusters(list(videos.keys))
    n_clusters = int(cluster_of.max()) + 1
    ones = np.ones((1, len(videos.keys)))
    per_seed = np.array([_metric(metric, a[s], videos, ones)[0]
                         - _metric(metric, b[s], videos, ones)[0] for s in seeds])
    rng = np.random.default_rng(seed)
    k = len(seeds)
    drawn = rng.integers(0, k, size=(n_boot, k)) if k > 1 else np.zeros((n_boot, 1), int)
    values = np.full(drawn.shape, np.nan)
    for i, s in enumerate(seeds):
        rows, cols = np.nonzero(drawn == i)
        for start in range(0, len(rows), CHUNK):
            r, c = rows[start:start + CHUNK], cols[start:start + CHUNK]
            picks = rng.integers(0, n_clusters, size=(len(r), n_clusters))
            counts = np.zeros((len(r), n_clusters))
            np.add.at(counts, (np.arange(len(r))[:, None], picks), 1.0)
            weights = counts[:, cluster_of]  # each video weighs its cluster's draws
            values[r, c] = (_metric(metric, a[s], videos, weights)
                            - _metric(metric, b[s], videos, weights))
    with warnings.catch_warnings():  # a replicate whose every draw had one class: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        replicates = np.nanmean(values, axis=1)
    return Comparison(float(np.mean(per_seed)), replicates, per_seed, tuple(seeds), clustered,
                      n_boot, label)


def holm(comparisons: list[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """Holm's step-down correction across ``comparisons`` (in place, returned): sorted by
    bootstrap p, the i-th of the m comparisons with a p is declared while its interval at level
    1 - alpha / (m - i + 1) excludes 0; each comparison's interval level is that of its step
    (the first undeclared step's for all after it), so a declared difference's interval
    excludes 0. A comparison without replicates (NaN p) is never declared and not counted."""
    valid = [c for c in comparisons if not math.isnan(c.p_value)]
    for c in comparisons:
        c.marked, c.level = False, 1 - alpha
    m = len(valid)
    stopped = None
    for rank, c in enumerate(sorted(valid, key=lambda c: c.p_value)):
        level = 1 - alpha / (m - rank)
        if stopped is None and c.interval(level).excludes_zero:
            c.marked, c.level = True, level
        else:
            stopped = level if stopped is None else stopped
            c.level = stopped
    return comparisons


def procedure_note(comparisons: list[Comparison], what: str) -> str:
    """The note every table with intervals states: the level, the seeds, what was resampled
    and the correction."""
    if not comparisons:
        return ""
    seeds = sorted({len(c.seeds) for c in comparisons})
    resampled = ("identity pairs of test videos" if all(c.clustered for c in comparisons)
                 else "test videos (no identity pairs in their names)")
    n = "/".join(map(str, seeds))
    level_one = f"the seeds ({n} of them) with replacement, then" if max(seeds) > 1 \
        else "(one seed: the test level only)"
    return (f"↑/↓ ({what}): a two-level bootstrap ({comparisons[0].n_boot} replicates) resamples "
            f"{level_one} {resampled} within each; runs paired by seed. Holm's correction "
            f"across the table's {len(comparisons)} comparison{'s' * (len(comparisons) != 1)} "
            f"at family-wise 95 %; an interval is read at its Holm step's level.")
