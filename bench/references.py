"""Report section of the reference-routing bench (bench/reference_bench.py), and the ideal ratios
at real FLUX.2 [dev] shapes (computed from the plan, not timed)."""

from __future__ import annotations

from bench import common
from bench.attention_bench import region_route
from musar import routes
from musar.layout import TokenLayout

TIME_TARGETS = ((4, 0.6), (10, 0.4))  # issue 12: static reference routing vs dense attention
FAMILY_NAMES = {"flux2": "FLUX.2-like", "qwen": "Qwen-Image-Edit", "klein": "FLUX.2 [klein]"}


def section(refs: dict, verdicts: list) -> list[str]:
    sh, family = refs["shapes"], refs.get("family", "flux2")
    who = "" if family == "flux2" else f" ({FAMILY_NAMES[family]})"
    rows, over, lxl = [], [], []
    for r in refs["per_n"]:
        tp, al, q = r["tensor_peak"], r["allocator_peak"], r["ratios"]
        mem = max(tp[c] / tp["dense"] for c in ("routed", "routed_dyn"))
        mem = max(mem, max(al[c] / al["dense"] for c in ("routed", "routed_dyn")))
        if mem > 1.0:
            over.append(f"{r['ref']}-token refs N={r['n']}: {mem:.2f}")
        lxl.append(max(r["largest_numel"][c] for c in ("routed", "routed_dyn", "routed_gather"))
                   / r["LxL"])
        rows.append([r["ref"], r["n"], r["L"], r["median_s"]["dense"] * 1000, r["ideal_static"],
                     q["routed/dense"], r["ideal_dyn"], q["routed_dyn/dense"],
                     tp["routed"] / tp["dense"], al["routed"] / al["dense"],
                     tp["routed_dyn"] / tp["dense"], al["routed_dyn"] / al["dense"],
                     tp["routed_gather"] / tp["dense"], lxl[-1]])
    by = {(r["ref"], r["n"]): r for r in refs["per_n"]}
    for ref in sh["ref_tokens"]:
        for n, limit in TIME_TARGETS:
            if (ref, n) in by:
                r = by[(ref, n)]
                got = r["ratios"]["routed/dense"]
                verdicts.append((f"reference routing{who} (static) <= {limit}x dense at N={n}, "
                                 f"{ref}-token references", got <= limit,
                                 f"{got:.2f}x (ideal {r['ideal_static']:.2f}; dynamic "
                                 f"{r['ratios']['routed_dyn/dense']:.2f}x)"))
    verdicts.append((f"reference routing{who} peak memory <= 1.0x dense (all N)", not over,
                     "over at " + ", ".join(over) if over else "all N within 1.0x (live tensors "
                     "and allocator)"))
    verdicts.append((f"reference routing{who}: no L x L tensor", max(lxl) < 1.0,
                     f"largest routed tensor <= {max(lxl):.3f} L^2 elements"))
    prompt = sh["prompt"] if sh["prompt"] is not None else "growing with the pictures (L - canvas - references)"
    return [f"## Reference routing vs stock dense attention ({FAMILY_NAMES[family]} token counts)", "",
            f"Time: {sh['heads']} head x {sh['head_dim']}; memory: {sh['memory_heads']} heads x "
            f"{sh['head_dim'] // sh['memory_heads']} (same bytes per token; see "
            f"bench/reference_bench.py). Canvas {sh['grid'][0] * sh['grid'][1]} "
            f"tokens, prompt {prompt}, N references of the given size, no captions "
            "(ReferenceLatent tokens). routed = static reference routing, routed_dyn = + dynamic "
            "routing (canvas cut into N regions); both the log-sum-exp executor. Memory: "
            "live tensors / allocator peak, relative to dense; gather = the gather executor's "
            "live tensors. Largest = biggest routed tensor / L^2 elements.", "",
            common.table(["ref tokens", "N", "L", "dense ms", "ideal static", "routed/dense",
                          "ideal dyn", "routed_dyn/dense", "mem routed", "mem routed (alloc)",
                          "mem routed_dyn", "mem routed_dyn (alloc)", "mem gather",
                          "largest / L^2"], rows), ""]


def real_shapes() -> list[str]:
    """Ideal ratios at FLUX.2 [dev] shapes: 1024 x 1024 canvas (4096 tokens), prompt 512."""
    rows = []
    for ref in (1024, 2304, 4096):
        for n in (1, 2, 4, 6, 10):
            lay = TokenLayout(512, 4096, reference_lens=(ref,) * n)
            rows.append([ref, n, lay.total,
                         routes.allowed_fraction(lay, routes.RoutePlan()),
                         routes.allowed_fraction(lay, routes.RoutePlan(block_prompt_references=True)),
                         routes.allowed_fraction(lay, routes.RoutePlan(
                             route=region_route(n, (64, 64))))])
    return ["## Ideal ratios at real FLUX.2 [dev] shapes (computed from the plan, not timed)", "",
            "1024x1024 target (4096 tokens), prompt 512, N references of 1024 (512x512), 2304 "
            "(768x768) or 4096 (1024x1024) tokens; static = reference routing defaults, "
            "+block = prompt <-> reference blocking on, dyn = static + dynamic (N regions):", "",
            common.table(["ref tokens", "N", "L", "ideal static", "ideal static+block",
                          "ideal dyn"], rows), ""]
