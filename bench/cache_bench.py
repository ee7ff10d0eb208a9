"""The exact reference cache (``isolate`` + ``condition_cache``) against the stock step, routed
references and core's Flux KV Cache, at FLUX.2 [dev] token counts: prompt 512, canvas 4096
(1024 x 1024), N = 1 ... 6 references of 1024 and of 4096 tokens.

One sampling step of one block, per case:

* ``stock``    every token through the block's linear layers, dense attention over all L tokens
               (the stock ReferenceLatent graph)
* ``routed``   the same linear work, routed attention (static reference routing)
* ``cached``   the pack's exact cache: prompt + canvas through the linear layers; their queries
               over every key (the cached references' keys put back: ``block.block_attention``
               with a filled ``ConditionCache``, the concatenation included), isolated plan
* ``core_kv``  core's Flux KV Cache (approximate): the same token counts, dense attention of the
               prompt + canvas queries over every key

A block at real width does not fit this CPU's time at these token counts, so its two parts are
measured apart and added: **linear work** is a real-width block's linear layers (12 W^2
multiply-adds per token: qkv, output projection and MLP of a double-stream block's stream or a
single-stream block) timed on 256 tokens at W = 3072 (FLUX.1) and 6144 (FLUX.2 [dev]) and
scaled by tokens (linear layers are linear in tokens); **attention** is timed at the real token
counts on one head of 128 and multiplied by the head count (24 / 48), as every case's attention
scales with heads alike. One torch thread, CPU time, shuffled rounds, medians.

Memory: the cache holds 2 x reference tokens x W numbers per block and CFG branch; reported per
block and for the whole model in bf16 (FLUX.2 [dev]: 8 + 48 blocks, W 6144; FLUX.1: 19 + 38, W
3072).

Usage: python bench/cache_bench.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.attention_bench import kernels  # noqa: E402
from musar import attention, block, routes, session  # noqa: E402
from musar.layout import TokenLayout  # noqa: E402
from musar.settings import RoutingSettings  # noqa: E402

SHAPES = dict(prompt=512, canvas=4096, ref_tokens=(1024, 4096), ns=(1, 2, 3, 4, 5, 6),
              head_dim=128, linear_tokens=256)
QUICK = dict(prompt=64, canvas=256, ref_tokens=(64, 256), ns=(1, 3), head_dim=128, linear_tokens=32)
MODELS = {"FLUX.2 [dev]": dict(width=6144, heads=48, blocks=8 + 48),
          "FLUX.1": dict(width=3072, heads=24, blocks=19 + 38)}
TARGET = dict(n=3, ref=4096, ratio=0.4)  # cached step <= 0.4 x the stock step at N = 3 x 4096


def linear_seconds_per_token(width: int, tokens: int) -> float:
    """CPU seconds per token of one block's linear layers at ``width`` (12 W^2 multiply-adds):
    qkv (W -> 3W), output projection (W -> W), MLP (W -> 4W -> W)."""
    g = torch.Generator().manual_seed(0)
    layers = [torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width),
              torch.nn.Linear(width, 4 * width), torch.nn.Linear(4 * width, width)]
    x = torch.randn(1, tokens, width, generator=g)

    def run():
        with torch.no_grad():
            layers[0](x)
            layers[1](x)
            return layers[3](layers[2](x))

    cpu, _ = common.rounds({"linear": run}, min_rounds=3, max_rounds=3)
    return common.median(cpu["linear"]) / tokens


def attention_cases(n: int, ref: int, shapes: dict, sdpa) -> tuple[dict, TokenLayout]:
    """The four cases' attention on one head at the real token counts."""
    layout = TokenLayout(shapes["prompt"], shapes["canvas"], reference_lens=(ref,) * n)
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, 1, layout.total, shapes["head_dim"], generator=g) for _ in range(3))
    kept = layout.prompt_len + layout.canvas_len  # the queries a cached step holds ([P | X | R])
    q_short, k_short, v_short = q[:, :, :kept], k[:, :, :kept], v[:, :, :kept]
    settings = RoutingSettings(dynamic_routing=False, isolate=True, condition_cache=True)
    cache = session.ConditionCache((), ())
    cache.store("b", k, v, layout)
    call = session.MusarCall(layout, routes.RoutePlan(isolated=True), settings=settings,
                             cache=cache, cached=True)
    static = routes.RoutePlan()
    return {"stock": lambda: sdpa(q, k, v),
            "routed": lambda: attention.routed_attention(q, k, v, layout, static, sdpa),
            "cached": lambda: block.block_attention(call, "b", q_short, k_short, v_short, None,
                                                     lambda q_, k_, v_, mask=None: sdpa(q_, k_, v_)),
            "core_kv": lambda: sdpa(q_short, k, v)}, layout


def run(shapes: dict, sdpa) -> dict:
    linear = {name: linear_seconds_per_token(m["width"], shapes["linear_tokens"])
              for name, m in MODELS.items()}
    print("[cache] linear s/token per block: " + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in linear.items()),
          flush=True)
    per_n = []
    for ref in shapes["ref_tokens"]:
        for n in shapes["ns"]:
            cases, layout = attention_cases(n, ref, shapes, sdpa)
            cpu, _ = common.rounds(cases, min_rounds=3, max_rounds=5, seed=n,
                                   watch=(("cached", "stock"),))
            attn = {c: common.median(ts) for c, ts in cpu.items()}
            kept = layout.prompt_len + layout.canvas_len
            tokens = {"stock": layout.total, "routed": layout.total, "cached": kept, "core_kv": kept}
            steps = {name: {c: linear[name] * tokens[c] + attn[c] * m["heads"] for c in cases}
                     for name, m in MODELS.items()}
            ratios = {name: {c: s[c] / s["stock"] for c in cases} for name, s in steps.items()}
            cache_bytes = {name: 2 * n * ref * m["width"] * 2 for name, m in MODELS.items()}  # bf16
            r = {"n": n, "ref": ref, "L": layout.total, "kept": kept, "attention_1head_s": attn,
                 "step_block_s": steps, "ratios": ratios, "cache_bytes_per_block": cache_bytes,
                 "cache_bytes_model": {name: cache_bytes[name] * MODELS[name]["blocks"]
                                       for name in MODELS}}
            per_n.append(r)
            f2 = ratios["FLUX.2 [dev]"]
            print(f"[cache] ref={ref} N={n} L={layout.total} | FLUX.2 [dev] step vs stock: "
                  + " ".join(f"{c}={x:.2f}" for c, x in f2.items())
                  + f" | cache {r['cache_bytes_model']['FLUX.2 [dev]'] / 2**30:.1f} GiB", flush=True)
    return {"shapes": shapes, "models": MODELS, "linear_s_per_token": linear, "per_n": per_n}


def section(result: dict, verdicts: list) -> list[str]:
    """The report's section and the target's verdict."""
    rows = []
    for r in result["per_n"]:
        f2, f1 = r["ratios"]["FLUX.2 [dev]"], r["ratios"]["FLUX.1"]
        rows.append([r["ref"], r["n"], r["L"], f2["routed"], f2["cached"], f2["core_kv"], f1["cached"],
                     r["cache_bytes_per_block"]["FLUX.2 [dev]"] / 2**20,
                     r["cache_bytes_model"]["FLUX.2 [dev]"] / 2**30,
                     r["cache_bytes_model"]["FLUX.1"] / 2**30])
    out = ["## Exact reference cache (isolate + condition_cache)", "",
           "Step time of one block against the stock step (linear work at real width + attention "
           "on one head x the head count; bench/cache_bench.py), and the cache's memory per CFG "
           "branch in bf16.", "",
           common.table(["ref tokens", "N", "L", "routed (F2)", "cached (F2)", "core KV (F2)",
                         "cached (F1)", "cache/block MiB (F2)", "cache GiB FLUX.2 [dev]",
                         "cache GiB FLUX.1"], rows), ""]
    hit = [r for r in result["per_n"] if r["n"] == TARGET["n"] and r["ref"] == TARGET["ref"]]
    if hit:
        x = hit[0]["ratios"]["FLUX.2 [dev]"]["cached"]
        verdicts.append((f"exact cache: step <= {TARGET['ratio']} x stock at N = 3 x 4096 (FLUX.2 [dev])",
                         x <= TARGET["ratio"], f"{x:.2f}x"))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke run, seconds)")
    ap.add_argument("--json", type=Path, help="default: bench/results/cache.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sdpa, _ = kernels()
    result = run(QUICK if args.quick else SHAPES, sdpa)
    result["machine"] = common.machine()
    return common.save(result, args.json or common.RESULTS / "cache.json")


if __name__ == "__main__":
    main()
