"""Shared bench helpers: side-by-side timing rounds, least-squares growth, machine description."""

from __future__ import annotations

import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). With one torch thread the CPU time is the
    work done, unaffected by waiting for a core that other processes hold; both are kept."""
    return time.perf_counter(), time.process_time()


def timed(fn) -> tuple[float, float]:
    w0, c0 = clock()
    result = fn()
    w1, c1 = clock()
    del result
    return w1 - w0, c1 - c0


def rounds(cases: dict, min_rounds: int = 3, max_rounds: int = 7, spread: float = 0.08,
           watch: tuple = (), seed: int = 0, warmup: bool = True) -> tuple[dict, dict]:
    """Time every case once per round, in a shuffled order each round (so load from other
    processes hits all cases alike), after one warm-up call each (unless ``warmup`` is off).
    Stops after ``min_rounds`` once the ratios named in ``watch`` ((num, den) pairs) have a
    relative spread (median absolute deviation / median) below ``spread``, else at
    ``max_rounds``. Returns (cpu, wall) times: {case: [seconds per round]}."""
    rng = random.Random(seed)
    for fn in cases.values() if warmup else ():
        timed(fn)
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    wall: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(max_rounds):
        order = list(cases)
        rng.shuffle(order)
        for name in order:
            w, c = timed(cases[name])
            wall[name].append(w)
            cpu[name].append(c)
        if r + 1 >= min_rounds and all(_rel_mad([a / b for a, b in zip(cpu[n], cpu[d])]) < spread
                                       for n, d in watch):
            break
    return cpu, wall


def _rel_mad(xs: list[float]) -> float:
    med = statistics.median(xs)
    return statistics.median(abs(x - med) for x in xs) / med if med else 0.0


def median(xs) -> float:
    return statistics.median(xs)


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x -> (slope b, intercept a, R^2)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return b, a, 1.0 - ss_res / ss_tot if ss_tot else 1.0


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = Path("/proc/meminfo").read_text().split()[1]
        mem_gib = round(int(mem) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        mem_gib = None
    return {"cpu": cpu, "cores": _cores(), "torch_threads": torch.get_num_threads(),
            "mem_gib": mem_gib, "torch": torch.__version__, "python": platform.python_version(),
            "loadavg_at_start": loadavg()}


def save(results: dict, path: Path) -> dict:
    """Stamp the load average at the end and write the results as JSON."""
    results["loadavg_at_end"] = loadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    return results


def loadavg() -> list[str]:
    """1, 5 and 15 minute load averages (how busy other processes kept the machine)."""
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return []


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(headers: list[str], rows: list[list]) -> str:
    """Markdown table (also readable as plain text)."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in cells])


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.3f}" if abs(c) < 100 else f"{c:.0f}"
    return str(c)
