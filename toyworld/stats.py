"""Intervals and tests of the evaluation (pure numpy / math; docs/TOY_WORLD.md, "Statistics").

- ``wilson``: 95 % Wilson score interval of a rate k / n.
- ``paired_bootstrap``: percentile interval of mean(x) - mean(y) over cases resampled with
  replacement (the same resample for both, so the pairing by case is kept); with ``ratio`` the
  statistic is sum(x_num) / sum(x_den) - sum(y_num) / sum(y_den) (e.g. L/T).
- ``mcnemar``: exact two-sided McNemar test of paired binary outcomes (binomial on the
  discordant pairs).
- ``clustered_bootstrap``: the percentile interval of a mean, a paired difference or a ratio
  (difference) when rows share **clusters** (the toy evaluations' identities: one identity
  appears in many cases, so cases are not independent). Clusters are resampled with replacement,
  not rows: a row's weight is the mean of its clusters' multiplicities in the resample [chosen:
  a row of one cluster gets exactly the cluster bootstrap's weight; a case of several identities
  keeps weight while any of them is drawn].
- ``holm``: Holm's step-down adjusted p-values of a family of tests.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _statistic(values: tuple[np.ndarray, ...], idx: np.ndarray, ratio: bool) -> np.ndarray:
    if not ratio:
        x, y = values
        return x[idx].mean(-1) - y[idx].mean(-1)
    xn, xd, yn, yd = values
    with np.errstate(divide="ignore", invalid="ignore"):
        return xn[idx].sum(-1) / xd[idx].sum(-1) - yn[idx].sum(-1) / yd[idx].sum(-1)


def paired_bootstrap(*values, ratio: bool = False, resamples: int = 4000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """``values``: x, y (per-case values of two conditions) or, with ``ratio``, x_num, x_den,
    y_num, y_den. Returns the observed difference and its percentile interval."""
    arrays = tuple(np.asarray(v, dtype=np.float64) for v in values)
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays) or len(arrays) != (4 if ratio else 2):
        raise ValueError(f"expected {'4' if ratio else '2'} per-case arrays of one non-zero length")
    rng = np.random.default_rng(seed)
    observed = float(_statistic(arrays, np.arange(n)[None], ratio)[0])
    draws = _statistic(arrays, rng.integers(0, n, size=(resamples, n)), ratio)
    draws = draws[np.isfinite(draws)]
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]) if len(draws) else (np.nan, np.nan)
    return {"diff": observed, "lo": float(lo), "hi": float(hi), "n": n}


def mcnemar(x, y) -> dict:
    """Paired binary outcomes x, y (per case). b = x only, c = y only; exact two-sided p."""
    x, y = np.asarray(x, bool), np.asarray(y, bool)
    b, c = int((x & ~y).sum()), int((~x & y).sum())
    n, k = b + c, min(b, c)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return {"x_only": b, "y_only": c, "p": p}


def cluster_weights(clusters, resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(resamples, rows) weights: each resample draws the K distinct clusters K times with
    replacement; a row weighs the mean multiplicity of its clusters. ``clusters``: per row, one
    label or a sequence of labels. Also returns K."""
    rows = [tuple(c) if isinstance(c, (list, tuple)) else (c,) for c in clusters]
    if not rows or any(not r for r in rows):
        raise ValueError("expected at least one row, each with at least one cluster label")
    labels = sorted({c for r in rows for c in r}, key=repr)
    index = {c: i for i, c in enumerate(labels)}
    k = len(labels)
    counts = np.zeros((resamples, k))
    np.add.at(counts, (np.arange(resamples)[:, None], rng.integers(0, k, size=(resamples, k))), 1.0)
    member = np.zeros((len(rows), k))
    for i, r in enumerate(rows):
        for c in r:
            member[i, index[c]] += 1.0 / len(r)
    return counts @ member.T, k


def _weighted(values: tuple[np.ndarray, ...], w: np.ndarray, ratio: bool) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        if ratio:
            num = [(w * v).sum(-1) for v in values]
            out = num[0] / num[1]
            return out - num[2] / num[3] if len(values) == 4 else out
        means = [(w * v).sum(-1) / w.sum(-1) for v in values]
        return means[0] - means[1] if len(values) == 2 else means[0]


def clustered_bootstrap(*values, clusters, ratio: bool = False, resamples: int = 4000, seed: int = 0,
                        level: float = 0.95) -> dict:
    """``values``: per-row arrays x (a mean), x, y (the paired difference of means) or, with
    ``ratio``, x_num, x_den (a ratio of sums) or x_num, x_den, y_num, y_den (a difference of
    ratios); ``clusters``: per row its cluster label(s). Returns the estimate (also as ``diff`` for
    a difference, with ``p``: two-sided, 2 x the smaller share of resampled differences on either
    side of 0, at least 1 / resamples, docs/TOY_WORLD.md §11.2), the percentile interval over
    cluster resamples, the rows and the clusters."""
    arrays = tuple(np.asarray(v, dtype=np.float64) for v in values)
    n = len(arrays[0])
    allowed = (2, 4) if ratio else (1, 2)
    if n == 0 or any(len(a) != n for a in arrays) or len(arrays) not in allowed or len(clusters) != n:
        raise ValueError(f"expected {' or '.join(map(str, allowed))} per-row arrays of one non-zero length "
                         "and one cluster entry per row")
    rng = np.random.default_rng(seed)
    observed = float(_weighted(arrays, np.ones((1, n)), ratio)[0])
    weights, k = cluster_weights(clusters, resamples, rng)
    draws = _weighted(arrays, weights, ratio)
    draws = draws[np.isfinite(draws)]
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]) if len(draws) else (np.nan, np.nan)
    out = {"estimate": observed, "lo": float(lo), "hi": float(hi), "n": n, "clusters": k}
    if len(arrays) == (4 if ratio else 2):
        out["diff"] = observed
        if len(draws):
            side = min(float((draws <= 0).mean()), float((draws >= 0).mean()))
            out["p"] = min(1.0, max(1.0 / len(draws), 2.0 * side))
    return out


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the i-th smallest p times (m - i + 1),
    made monotone, capped at 1. Reject a hypothesis at level alpha when its adjusted p <= alpha."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return [float(x) for x in out]
