"""Intervals and tests of the evaluation (pure numpy / math; docs/TOY_WORLD.md, "Statistics").

- ``wilson``: 95 % Wilson score interval of a rate k / n.
- ``paired_bootstrap``: percentile interval of mean(x) - mean(y) over cases resampled with
  replacement (the same resample for both, so the pairing by case is kept); with ``ratio`` the
  statistic is sum(x_num) / sum(x_den) - sum(y_num) / sum(y_den) (e.g. L/T).
- ``mcnemar``: exact two-sided McNemar test of paired binary outcomes (binomial on the
  discordant pairs).
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
