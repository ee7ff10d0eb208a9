"""Tables and PASS/MISS verdicts from the bench JSON files (bench/results/*.json)."""

from __future__ import annotations

from bench import cache_bench, common, references
from bench.attention_bench import region_route
from musar import routes
from musar.layout import TokenLayout

MB = 2 ** 20


def render(att: dict | None, sampling: dict, command: str, seconds: float,
           refs: list[dict | None] | None = None, cache: dict | None = None) -> str:
    """The report; ``refs``: one reference-bench result per family run (None: it failed);
    ``cache``: the exact-cache bench's result."""
    out = ["# MUSAR bench report", ""]
    verdicts: list[tuple[str, bool | None, str]] = []
    first = att or next((s for s in sampling.values() if s), None)
    if first:
        m = first["machine"]
        out += [f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, torch {m['torch']}, "
                f"Python {m['python']}, load average at start {' '.join(m['loadavg_at_start'])}, "
                f"at end {' '.join(first.get('loadavg_at_end', []))}.",
                f"Command: `{command}` ({seconds:.0f} s).", ""]
    if att:
        out += _attention(att, verdicts)
        out += _growth(att, verdicts)
    else:
        verdicts.append(("attention bench ran", False, "the attention bench failed (see log)"))
    for result in refs or []:
        if result:
            out += references.section(result, verdicts)
        else:
            verdicts.append(("reference bench ran", False, "a reference bench failed (see log)"))
    if cache:
        out += cache_bench.section(cache, verdicts)
    else:
        verdicts.append(("cache bench ran", False, "the cache bench failed (see log)"))
    for kernel, s in sampling.items():
        if s:
            out += _sampling(kernel, s, verdicts)
        else:
            verdicts.append((f"sampling bench ({kernel}) ran", False, "failed (see log)"))
    out += _real_shapes() + references.real_shapes()
    out += ["## Targets", "", common.table(
        ["target", "verdict", "measured"],
        [[name, "n/a" if ok is None else common.verdict(ok), detail] for name, ok, detail in verdicts])]
    return "\n".join(out) + "\n"


def _attention(att: dict, verdicts: list) -> list[str]:
    sh = att["shapes"]
    rows = []
    for r in att["per_n"]:
        q = r["ratios"]
        rows.append([r["n"], r["L"], r["median_s"]["dense"] * 1000,
                     r["ideal_static"], q["routed/dense"], q["routed_gather/dense"], r["ideal_dyn"],
                     q["routed_dyn/dense"], q["routed_dyn_gather/dense"], q["routed_dyn_s/dense"],
                     q["naive/routed"], q["naive_dyn_s/routed_dyn_s"]])
    lines = [
        "## Attention (one call, CPU time ratios; medians of rounds run side by side)", "",
        f"{sh['heads']} heads x {sh['head_dim']}, X = {sh['grid'][0] * sh['grid'][1]} tokens, "
        f"{sh['ref_tokens']} tokens per reference, prompt {sh['prompt']}, captions "
        f"{', '.join(map(str, sh['captions']))}; dynamic route: canvas cut into N regions. "
        "Ideal = allowed query-key pairs / all pairs. routed = the log-sum-exp executor (SDPA "
        "kernel with its twin), gather = the gather executor (kernels without one). "
        "routed_dyn+s = route scores + routed dynamic attention (a routing block). naive = full "
        "boolean L x L mask + explicit softmax (+ unchunked route scores for the dynamic case).", "",
        common.table(["N", "L", "dense ms", "ideal static", "routed/dense", "gather/dense",
                      "ideal dyn", "routed_dyn/dense", "gather_dyn/dense", "routed_dyn+s/dense",
                      "naive/routed", "naive_dyn+s/routed_dyn+s"], rows), ""]
    lines += _memory(att, verdicts)
    by_n = {r["n"]: r for r in att["per_n"]}
    for n, limit in ((3, 0.9), (6, 0.6)):
        if n in by_n:
            q = by_n[n]["ratios"]
            worst = max(q["routed/dense"], q["routed_dyn/dense"])
            verdicts.append((f"routed attention <= {limit}x dense at N={n}", worst <= limit,
                             f"static {q['routed/dense']:.2f}, static+dynamic "
                             f"{q['routed_dyn/dense']:.2f} (with route scores "
                             f"{q['routed_dyn_s/dense']:.2f})"))
    worst = max(max(r["ratios"]["routed/routed_gather"], r["ratios"]["routed_dyn/routed_dyn_gather"])
                for r in att["per_n"])
    verdicts.append(("log-sum-exp executor no slower than the gather executor (<= 1.05x, all N)",
                     worst <= 1.05, "routed/gather static " + ", ".join(
                         f"{r['ratios']['routed/routed_gather']:.2f}" for r in att["per_n"])
                     + "; dynamic " + ", ".join(f"{r['ratios']['routed_dyn/routed_dyn_gather']:.2f}"
                                                for r in att["per_n"])))
    if 3 in by_n:
        q = by_n[3]["ratios"]
        worst = min(q["naive/routed"], q["naive_dyn_s/routed_dyn_s"])
        verdicts.append(("routed >= 2x faster than the naive port at N=3", worst >= 2.0,
                         f"static {q['naive/routed']:.1f}x, dynamic+scores "
                         f"{q['naive_dyn_s/routed_dyn_s']:.1f}x"))
    sq = [r for r in att["per_n"] if "routed_sq/dense_sq" in r["ratios"]]
    if sq:
        lines += ["ComfyUI's default CPU kernel (sub-quadratic) in both paths:", "",
                  common.table(["N", "routed_sq/dense_sq", "routed_sq/dense (SDPA)",
                                "mem routed_sq/dense_sq", "largest routed_sq / L^2",
                                "largest dense_sq / L^2"],
                               [[r["n"], r["ratios"]["routed_sq/dense_sq"],
                                 r["ratios"]["routed_sq/dense"],
                                 r["tensor_peak"]["routed_sq"] / r["tensor_peak"]["dense_sq"],
                                 r["largest_numel"]["routed_sq"] / r["LxL"],
                                 r["largest_numel"]["dense_sq"] / r["LxL"]]
                                for r in sq]), "",
                  "(the sub-quadratic kernel's own score chunks, query_chunk x keys x heads, "
                  "are its largest tensors in both paths)", ""]
    return lines


def _memory(att: dict, verdicts: list) -> list[str]:
    rows, over, lxl_routed, lxl_naive = [], [], [], []
    for r in att["per_n"]:
        tp, al, big = r["tensor_peak"], r["allocator_peak"], r["largest_numel"]
        d = tp["dense"]
        routed_cases = ("routed", "routed_dyn", "routed_dyn_s", "routed_gather", "routed_dyn_gather")
        lxl_routed.append(max(big[c] for c in routed_cases) / r["LxL"])
        lxl_naive.append(big["naive"] / r["LxL"])
        ratio = max(max(tp[c] for c in ("routed", "routed_dyn", "routed_dyn_s")) / d,
                    max(al[c] for c in ("routed", "routed_dyn")) / al["dense"])
        if ratio > 1.0:
            over.append(f"N={r['n']}: {ratio:.2f}")
        inputs = r["input_bytes"]
        rows.append([r["n"], d / MB, tp["routed"] / d, tp["routed_dyn"] / d,
                     tp["routed_dyn_s"] / d, tp["routed_gather"] / d, tp["routed_dyn_gather"] / d,
                     tp["naive"] / d, al["routed"] / al["dense"], al["routed_dyn"] / al["dense"],
                     (inputs + tp["routed"]) / (inputs + d), lxl_routed[-1], lxl_naive[-1]])
    verdicts.append(("peak attention memory <= 1.0x dense (all N, log-sum-exp executor)", not over,
                     "over at " + ", ".join(over) if over else "all N within 1.0x (live tensors "
                     "and allocator)"))
    verdicts.append(("no L x L tensor on the routed path (both executors, incl. route scores)",
                     max(lxl_routed) < 1.0 and min(lxl_naive) >= 1.0,
                     f"largest routed tensor <= {max(lxl_routed):.2f} L^2 elements; "
                     f"naive >= {min(lxl_naive):.2f} L^2"))
    return ["Peak memory of the call: bytes it allocates (temporaries + output; q, k, v not "
            "counted), from live tensors (TorchDispatchMode) and from torch's CPU allocator "
            "(profiler; includes the kernel's scratch buffers). 'incl. q,k,v' adds the inputs "
            "both calls hold (what a max_memory_allocated-style reading shows). Largest = "
            "biggest single tensor / L^2 elements.", "",
            common.table(["N", "dense MiB", "routed/dense", "routed_dyn/dense",
                          "routed_dyn+s/dense", "gather/dense", "gather_dyn/dense", "naive/dense",
                          "routed/dense (allocator)", "routed_dyn/dense (allocator)",
                          "routed/dense incl. q,k,v", "largest routed / L^2",
                          "largest naive / L^2"], rows), ""]


def _growth(att: dict, verdicts: list) -> list[str]:
    ns = [r["n"] for r in att["per_n"]]
    if len(ns) < 3:
        return []
    rows, ok = [], True
    for case in ("routed", "routed_dyn", "routed_dyn_s", "dense"):
        ys = [r["median_s"][case] * 1000 for r in att["per_n"]]
        slope, icpt, r2 = common.linear_fit(ns, ys)
        curv = _curvature(ns, ys)
        rows.append([case, slope, icpt, r2, curv])
        if case != "dense":
            ok = ok and r2 >= 0.98
    r2s = {row[0]: row[3] for row in rows}
    verdicts.append(("time grows linearly in N (routed, R^2 >= 0.98)", ok,
                     ", ".join(f"{k} R^2={v:.3f}" for k, v in r2s.items())))
    return ["## Growth with N (attention CPU time, least squares y = a + b N)", "",
            "curvature = share of the N=6 time that a quadratic term c N^2 takes in a "
            "least-squares quadratic fit (0 for linear growth).", "",
            common.table(["case", "slope ms/subject", "intercept ms", "R^2 (linear)",
                          "curvature"], rows), ""]


def _curvature(ns, ys) -> float:
    """c * N_max^2 / y(N_max) of the least-squares quadratic y = a + b N + c N^2."""
    import numpy as np

    c, b, a = np.polyfit(ns, ys, 2)
    return float(c * max(ns) ** 2 / ys[-1])


def _sampling(kernel: str, s: dict, verdicts: list) -> list[str]:
    t1, tn = s["step1_s"], s["steps2n_s"]
    tok = s["tokens"]
    p = s["paired_ratios"]
    rows = [[name, t1[name], tn[name], s["steps2n_wall_s"][name], tn[name] / tn["t2i"]]
            for name in ("t2i", "reference_latent", "musar", "musar_static", "musar_cache")
            if name in tn]
    verdicts.append((f"patched step <= 1.0x ReferenceLatent step at N=3 ({kernel})",
                     p["musar/reference_latent"] <= 1.0,
                     f"{p['musar/reference_latent']:.3f}x (steps 2..n, paired per round)"))
    verdicts.append((f"cache on: steps 2..n <= 1.25x text-to-image ({kernel})",
                     p["musar_cache/t2i"] <= 1.25, f"{p['musar_cache/t2i']:.3f}x"))
    m = s["model"]
    return [f"## Sampling step through ComfyUI ({kernel}: `{s['kernel_fn']}`)", "",
            f"FLUX architecture hidden {m['hidden']}, {m['heads']} heads, {m['depth']} double + "
            f"{m['single_depth']} single blocks; X {tok['x']} tokens, prompt {tok['prompt']}, "
            f"N = {len(tok['refs'])} references of {tok['refs'][0]} tokens, captions "
            f"{', '.join(map(str, tok['captions']))}; euler, cfg 1, {s['steps']} steps, "
            f"{s['rounds']} rounds (shuffled), {s['threads']} thread(s). musar = MUSAR_ApplyRouting "
            "defaults (static + dynamic from 20 %, route scores in the double blocks); musar_static = "
            "the same with dynamic routing off; musar_cache = defaults + condition cache.", "",
            common.table(["config", "step 1 CPU s", "steps 2..n CPU s", "steps 2..n wall s",
                          "vs t2i"], rows), "",
            "Paired ratios (per round, then median): " + ", ".join(
                f"{k} = {v:.3f}" for k, v in p.items()), ""]


def _real_shapes() -> list[str]:
    """Ideal ratios (pairs) at real FLUX.1 shapes: computed, not timed."""
    rows = []
    for n in (1, 2, 3, 4, 6):
        lay = TokenLayout(512, 4096, (12,) * n, (1024,) * n)
        static = routes.allowed_fraction(lay, routes.RoutePlan())
        dyn = routes.allowed_fraction(lay, routes.RoutePlan(route=region_route(n, (64, 64))))
        rows.append([n, lay.total, static, dyn])
    return ["## Ideal ratios at real FLUX.1 shapes (computed from the plan, not timed)", "",
            "1024x1024 target (4096 tokens), prompt 512, 512x512 references (1024 tokens), "
            "captions 12:", "", common.table(["N", "L", "ideal static", "ideal dyn"], rows), ""]
