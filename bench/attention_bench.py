"""Attention at FLUX-like shapes scaled for CPU: MUSAR's routed attention vs dense attention over
the same tokens (the Kontext / ReferenceLatent peer) vs the naive MUSAR port.

For every N the cases run side by side (shuffled order per round, warm-up first, medians of
CPU time with one torch thread; see docs/PERFORMANCE.md for why):

* ``dense``        one SDPA call over all L tokens (what ReferenceLatent does: full attention)
* ``routed``       musar.attention.routed_attention, static plan, same SDPA kernel (which
                   declares its log-sum-exp twin: the log-sum-exp executor runs)
* ``routed_dyn``   the same with static + dynamic routing under a realistic route (the canvas
                   split into N contiguous regions, one per subject)
* ``routed_dyn_s`` routed_dyn + the route scores (subject_attention_mass: what a routing
                   block runs)
* ``routed_gather`` / ``routed_dyn_gather``  routed / routed_dyn with the gather executor (the
                   kernel without its twin: what other kernels get, and the executor before)
* ``naive``        dense_reference: full boolean L x L mask + explicit softmax (static plan)
* ``naive_dyn_s``  dense_reference under the dynamic plan + route scores the naive way
                   (unchunked softmax over every key, summed per subject)
* ``routed_sq`` / ``dense_sq``  routed / dense with ComfyUI's default CPU kernel (sub-quadratic)

Memory: per case one run under ``TensorPeak`` (live tensor bytes, largest single tensor) inside
the allocator profiler (every byte torch mallocs, incl. kernels' scratch buffers).
Usage: python bench/attention_bench.py [--quick] [--threads 1] [--max-rounds 9] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common, memtrack  # noqa: E402
from musar import attention, routes  # noqa: E402
from musar.layout import TokenLayout  # noqa: E402

SHAPES = dict(heads=2, head_dim=128, grid=(32, 32), ref_tokens=1024, prompt=256,
              captions=(8, 12, 16, 10, 14, 9), ns=(1, 2, 3, 4, 6), subquad_ns=(3,))
QUICK = dict(SHAPES, grid=(16, 16), ref_tokens=256, prompt=128, ns=(1, 2, 3))


def layout_for(n: int, shapes: dict) -> TokenLayout:
    rows, cols = shapes["grid"]
    return TokenLayout(shapes["prompt"], rows * cols, tuple(shapes["captions"][:n]),
                       (shapes["ref_tokens"],) * n)


def region_route(n: int, grid: tuple[int, int]) -> torch.Tensor:
    """(1, rows*cols) route: the canvas cut into n contiguous tiles (1 row of tiles up to 3
    subjects, 2 rows beyond), as argmax routing with smoothing produces for separated subjects."""
    rows, cols = grid
    tr = 1 if n <= 3 else 2
    tc = math.ceil(n / tr)
    y = torch.arange(rows)[:, None] * tr // rows
    x = torch.arange(cols)[None, :] * tc // cols
    return (y * tc + x).clamp(max=n - 1).reshape(1, -1)


def naive_route_scores(q_x: torch.Tensor, k: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Route scores the naive way: the whole softmax of X queries over all keys, then summed."""
    p = torch.softmax((q_x.float() @ k.float().transpose(-1, -2)) * q_x.shape[-1] ** -0.5, -1)
    return torch.stack([p[..., layout.image(i)].sum(-1).mean(1)
                        for i in range(layout.n_subjects)], -1)


def kernels():
    """(sdpa, sub-quadratic) in the ``attn(q, k, v)`` convention: ComfyUI's own kernels when a
    ComfyUI runtime is present (as the pack gets them), else PyTorch SDPA only. The SDPA kernel
    declares its log-sum-exp twin, as nodes/patcher.py does for ComfyUI's ``attention_pytorch``."""
    try:
        from musar_run import runtime

        runtime.bootstrap()
        from comfy.ldm.modules import attention as comfy_attention
    except Exception:  # noqa: BLE001 - the attention bench also runs without ComfyUI
        return attention.sdpa, None

    def wrap(f, lse=None):
        fn = lambda q, k, v: f(q, k, v, q.shape[1], skip_reshape=True)  # noqa: E731
        fn.lse = lse
        return fn

    return (wrap(comfy_attention.attention_pytorch, attention.SDPA_LSE),
            wrap(comfy_attention.attention_sub_quad))


def without_lse(attn):
    """The same kernel without its log-sum-exp twin: routed attention runs the gather executor
    (what every kernel but SDPA gets; the only executor before the log-sum-exp one)."""
    return lambda q, k, v: attn(q, k, v)


def cases_for(layout, q, k, v, route, sdpa, subquad) -> dict:
    static = routes.RoutePlan(static=True)
    dyn = routes.RoutePlan(static=True, route=route)
    q_x = q[:, :, layout.x]

    def routed_dyn_s():
        attention.subject_attention_mass(q_x, k, layout)
        return attention.routed_attention(q, k, v, layout, dyn, sdpa)

    def naive_dyn_s():
        naive_route_scores(q_x, k, layout)
        return attention.dense_reference(q, k, v, layout, dyn)

    gather = without_lse(sdpa)
    cases = {
        "dense": lambda: sdpa(q, k, v),
        "routed": lambda: attention.routed_attention(q, k, v, layout, static, sdpa),
        "routed_dyn": lambda: attention.routed_attention(q, k, v, layout, dyn, sdpa),
        "routed_gather": lambda: attention.routed_attention(q, k, v, layout, static, gather),
        "routed_dyn_gather": lambda: attention.routed_attention(q, k, v, layout, dyn, gather),
        "routed_dyn_s": routed_dyn_s,
        "naive": lambda: attention.dense_reference(q, k, v, layout, static),
        "naive_dyn_s": naive_dyn_s,
    }
    if subquad is not None:
        cases["routed_sq"] = lambda: attention.routed_attention(q, k, v, layout, static, subquad)
        cases["dense_sq"] = lambda: subquad(q, k, v)
    return cases, {"static": static, "dyn": dyn}


def check_equal(cases: dict, layout, q, k, v, plans) -> float:
    """Largest deviation of the routed cases from the dense reference (sanity, not timing)."""
    worst = 0.0
    for name, plan in (("routed", "static"), ("routed_dyn", "dyn"), ("routed_gather", "static"),
                       ("routed_dyn_gather", "dyn"), ("routed_sq", "static")):
        if name in cases:
            want = attention.dense_reference(q, k, v, layout, plans[plan])
            worst = max(worst, (cases[name]() - want).abs().max().item())
    return worst


FAST = ("dense", "routed", "routed_dyn", "routed_dyn_s", "routed_gather", "routed_dyn_gather",
        "routed_sq", "dense_sq")
SLOW = ("dense", "routed", "routed_dyn_s", "naive", "naive_dyn_s")


def run_n(n: int, shapes: dict, sdpa, subquad, max_rounds: int) -> dict:
    """Memory first (one tracked run per case, which also warms every case up), then the fast
    cases side by side in 5..max_rounds rounds, then the naive port beside dense and routed in
    2 rounds (it is several times slower; its ratios are far from the 2x target)."""
    layout = layout_for(n, shapes)
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, shapes["heads"], layout.total, shapes["head_dim"], generator=g)
               for _ in range(3))
    route = region_route(n, shapes["grid"])
    use_sq = subquad if n in shapes["subquad_ns"] else None
    cases, plans = cases_for(layout, q, k, v, route, sdpa, use_sq)
    err = check_equal(cases, layout, q, k, v, plans)
    mem, largest, alloc = {}, {}, {}
    for name, fn in cases.items():
        tp, alloc[name] = memtrack.measure(fn)
        mem[name], largest[name] = tp.peak, tp.largest_numel
    fast = {c: cases[c] for c in FAST if c in cases}
    cpu, wall = common.rounds(fast, min_rounds=5, max_rounds=max_rounds, seed=n,
                              watch=(("routed", "dense"), ("routed_dyn", "dense")))
    slow_cpu, _ = common.rounds({c: cases[c] for c in SLOW}, min_rounds=2, max_rounds=2,
                                seed=n, warmup=False)
    med = {name: common.median(ts) for name, ts in cpu.items()}
    ratios = {f"{a}/dense": common.median([x / y for x, y in zip(cpu[a], cpu["dense"])])
              for a in fast if a != "dense"}
    ratios.update({f"{a}/{b}": common.median([x / y for x, y in zip(slow_cpu[a], slow_cpu[b])])
                   for a, b in (("naive", "dense"), ("naive", "routed"),
                                ("naive_dyn_s", "routed_dyn_s"), ("naive_dyn_s", "dense"))})
    ratios.update({f"{a}/{b}": common.median([x / y for x, y in zip(cpu[a], cpu[b])])
                   for a, b in (("routed", "routed_gather"), ("routed_dyn", "routed_dyn_gather"))})
    if "dense_sq" in cpu:
        ratios["routed_sq/dense_sq"] = common.median(
            [x / y for x, y in zip(cpu["routed_sq"], cpu["dense_sq"])])
    return {
        "n": n, "L": layout.total, "LxL": layout.total ** 2, "max_abs_err": err,
        "ideal_static": routes.allowed_fraction(layout, plans["static"]),
        "ideal_dyn": routes.allowed_fraction(layout, plans["dyn"]),
        "rounds": len(cpu["dense"]), "median_s": med, "ratios": ratios, "times_s": cpu,
        "median_wall_s": {name: common.median(ts) for name, ts in wall.items()},
        "naive_s": {name: common.median(ts) for name, ts in slow_cpu.items()},
        "tensor_peak": mem, "largest_numel": largest, "allocator_peak": alloc,
        "input_bytes": 3 * q.nbytes,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke run, seconds)")
    ap.add_argument("--max-rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: see docs/PERFORMANCE.md, 'Threads')")
    ap.add_argument("--json", type=Path, default=common.RESULTS / "attention.json")
    args = ap.parse_args(argv)
    shapes = QUICK if args.quick else SHAPES
    torch.set_num_threads(args.threads)
    sdpa, subquad = kernels()
    results = {"shapes": shapes, "machine": common.machine(), "subquad": subquad is not None,
               "per_n": []}
    for n in shapes["ns"]:
        r = run_n(n, shapes, sdpa, subquad, args.max_rounds)
        print(f"[attention] N={n} L={r['L']} rounds={r['rounds']} "
              + " ".join(f"{k}={v * 1000:.0f}ms" for k, v in r["median_s"].items())
              + " | " + " ".join(f"{k}={v:.2f}" for k, v in r["ratios"].items()), flush=True)
        results["per_n"].append(r)
    return common.save(results, args.json)


if __name__ == "__main__":
    main()
