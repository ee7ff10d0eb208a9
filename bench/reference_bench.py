"""Reference routing (MUSAR Route References) vs stock dense attention at the token counts of each
routed family, canvas 4096 tokens (1024 x 1024) throughout:

* ``flux2``  FLUX.2 [dev]: prompt 512, N = 2, 4, 6, 10 references of 1024 tokens (512 x 512) and,
             as a second series, of 4096 tokens (1024 x 1024)
* ``qwen``   Qwen-Image-Edit: references of 4096 tokens (1024 x 1024, Wan VAE 8x, patch 2), and a
             prompt that grows with them: ~110 template and text tokens + ~190 vision tokens per
             picture (TextEncodeQwenImageEditPlus: each picture at ~384 x 384 in the prompt), N =
             1 ... 10
* ``klein``  FLUX.2 [klein]: prompt 512 (Qwen3, padded to 512), references of 4096 tokens, N = 1 ... 10

Cases per N, side by side (shuffled order per round, warm-up first, CPU time of one torch
thread, medians; ratios = medians of per-round ratios):

* ``dense``       one SDPA call over all L tokens (ComfyUI's ``attention_pytorch``): what the
                  stock ``ReferenceLatent`` graph runs in every block
* ``routed``      musar.attention.routed_attention, static reference routing (reference i sees
                  itself, the prompt and the canvas; no reference sees another), the same
                  kernel with its log-sum-exp twin (what the patcher gives ComfyUI's SDPA kernel)
* ``routed_dyn``  the same + dynamic routing under a realistic route (canvas cut into N regions)

Time on one head of 128 (FLUX.2 [dev] has 48): every case's work scales with the head count
alike, so the time ratios depend on the token counts only, and one head keeps the N = 10 series
(L = 45,568 tokens, a 16-second dense call on one core) within the bench's time budget.
Memory: one tracked run per case (live tensor bytes and the CPU allocator's peak), plus the
gather executor's (what any kernel without a log-sum-exp twin runs), on 2 heads of 64: the same
bytes per token, and more than one head, as at real shapes, so that the dense kernel's
(B, heads, L, dim) -> (B, L, heads * dim) output reshape is a copy (with one head it is a view).
Usage: python bench/reference_bench.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common, memtrack  # noqa: E402
from bench.attention_bench import kernels, region_route, without_lse  # noqa: E402
from musar import attention, routes  # noqa: E402
from musar.layout import TokenLayout  # noqa: E402

SHAPES = dict(heads=1, head_dim=128, memory_heads=2, grid=(64, 64), prompt=512,
              ref_tokens=(1024, 4096), ns=(2, 4, 6, 10))
QWEN_TEXT, QWEN_PER_PICTURE = 110, 190  # Qwen-Image-Edit prompt: template + text, vision tokens
FAMILIES = {
    "flux2": SHAPES,
    "qwen": dict(SHAPES, prompt=None, ref_tokens=(4096,), ns=(1, 2, 3, 4, 6, 10)),
    "klein": dict(SHAPES, ref_tokens=(4096,), ns=(1, 2, 3, 4, 6, 10)),
}
QUICK = dict(SHAPES, grid=(16, 16), prompt=64, ref_tokens=(64, 256), ns=(2, 4))


def prompt_len(n: int, shapes: dict) -> int:
    """The family's prompt length with n references (Qwen-Image-Edit: n pictures in the prompt)."""
    if shapes["prompt"] is None:
        return QWEN_TEXT + QWEN_PER_PICTURE * n
    return shapes["prompt"]


def layout_for(n: int, ref: int, shapes: dict) -> TokenLayout:
    rows, cols = shapes["grid"]
    return TokenLayout(prompt_len(n, shapes), rows * cols, reference_lens=(ref,) * n)


def _cases(layout, plans: dict, heads: int, head_dim: int, seed: int, sdpa, gather) -> dict:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, layout.total, head_dim, generator=g) for _ in range(3))
    return {"dense": lambda: sdpa(q, k, v),
            "routed": lambda: attention.routed_attention(q, k, v, layout, plans["static"], sdpa),
            "routed_dyn": lambda: attention.routed_attention(q, k, v, layout, plans["dyn"], sdpa),
            "routed_gather": lambda: attention.routed_attention(q, k, v, layout, plans["static"],
                                                                gather)}


def run_n(n: int, ref: int, shapes: dict, sdpa, gather) -> dict:
    """Memory on ``memory_heads`` heads of head_dim / memory_heads (the same bytes per token),
    then the timed rounds on ``heads`` (the gather executor only in the memory run)."""
    layout = layout_for(n, ref, shapes)
    static = routes.RoutePlan()
    dyn = routes.RoutePlan(route=region_route(n, shapes["grid"]))
    plans = {"static": static, "dyn": dyn}
    mem, largest, alloc = {}, {}, {}
    heads = shapes["memory_heads"]
    for name, fn in _cases(layout, plans, heads, shapes["head_dim"] // heads, n, sdpa, gather).items():
        tp, alloc[name] = memtrack.measure(fn)
        mem[name], largest[name] = tp.peak, tp.largest_numel
    cases = _cases(layout, plans, shapes["heads"], shapes["head_dim"], n, sdpa, gather)
    del cases["routed_gather"]
    cpu, wall = common.rounds(cases, min_rounds=3, max_rounds=5, seed=n,
                              watch=(("routed", "dense"), ("routed_dyn", "dense")))
    ratios = {f"{a}/dense": common.median([x / y for x, y in zip(cpu[a], cpu["dense"])])
              for a in ("routed", "routed_dyn")}
    return {"n": n, "ref": ref, "L": layout.total, "LxL": layout.total ** 2,
            "ideal_static": routes.allowed_fraction(layout, static),
            "ideal_dyn": routes.allowed_fraction(layout, dyn), "rounds": len(cpu["dense"]),
            "median_s": {c: common.median(ts) for c, ts in cpu.items()}, "ratios": ratios,
            "times_s": cpu, "median_wall_s": {c: common.median(ts) for c, ts in wall.items()},
            "tensor_peak": mem, "largest_numel": largest, "allocator_peak": alloc}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke run, seconds)")
    ap.add_argument("--family", choices=sorted(FAMILIES), default="flux2",
                    help="token counts of this family (default flux2)")
    ap.add_argument("--json", type=Path, help="default: bench/results/references[_<family>].json")
    args = ap.parse_args(argv)
    shapes = QUICK if args.quick else FAMILIES[args.family]
    if args.quick and args.family == "qwen":
        shapes = dict(QUICK, prompt=None)
    suffix = "" if args.family == "flux2" else f"_{args.family}"
    args.json = args.json or common.RESULTS / f"references{suffix}.json"
    torch.set_num_threads(1)
    sdpa, _ = kernels()
    gather = without_lse(sdpa)
    results = {"family": args.family, "shapes": shapes, "machine": common.machine(), "per_n": []}
    for ref in shapes["ref_tokens"]:
        for n in shapes["ns"]:
            r = run_n(n, ref, shapes, sdpa, gather)
            print(f"[references {args.family}] ref={ref} N={n} L={r['L']} rounds={r['rounds']} "
                  + " ".join(f"{c}={t * 1000:.0f}ms" for c, t in r["median_s"].items()) + " | "
                  + " ".join(f"{c}={x:.2f}" for c, x in r["ratios"].items())
                  + f" | ideal static {r['ideal_static']:.2f}", flush=True)
            results["per_n"].append(r)
    return common.save(results, args.json)


if __name__ == "__main__":
    main()
