"""Where a sampling step's time goes, on the sampling bench's model and shapes.

  python bench/profile_step.py breakdown [--rounds 6]
      CPU seconds per step (steps 2..n, medians) split into attention (MUSAR's per-block
      attention incl. route scores, or ComfyUI's kernel for the unpatched model), route scores
      alone, and everything else, for t2i / reference_latent / musar / musar_static /
      musar_cache, configurations interleaved per round.
  python bench/profile_step.py ops --config musar [--steps 2] [--rows 25]
      torch.profiler table (self CPU time per op) of one sampling run.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench import sampling_bench as sb  # noqa: E402
from musar_run import runtime  # noqa: E402


def _setup(kernel: str):
    shapes, m = sb.SHAPES, sb.MODEL
    pack, _ = sb.bootstrap(kernel)
    standins = runtime.pack_module(pack, "nodes.testing.standins")
    model = standins.build_flux(standins.flux_unet_config(
        m["hidden"], m["heads"], m["depth"], m["single_depth"], m["context_dim"], m["vec_dim"]))
    g = torch.Generator().manual_seed(2)
    refs = [torch.randn(1, 16, 2 * h, 2 * w, generator=g) for h, w in shapes["refs"]]
    plain, kontext = sb.conditioning(shapes, refs, m["context_dim"])
    subjects = sb.subjects_for(pack, shapes, refs, m["context_dim"])
    return pack, model, subjects, plain, kontext


def _configs(pack, model, subjects, plain, kontext, clock):
    """Every configuration with its attention timed: MUSAR through musar.attention.block_attention, the unpatched
    model through an attention override that only times ComfyUI's kernel."""
    timed = model.clone()

    def override(func, *args, **kwargs):
        t = time.process_time()
        out = func(*args, **kwargs)
        clock["attn"] += time.process_time() - t
        return out

    timed.model_options["transformer_options"]["optimized_attention_override"] = override
    return {
        "t2i": (timed, plain),
        "reference_latent": (timed, kontext),
        "musar": (sb.musar_model(pack, model, subjects, cache=False), plain),
        "musar_static": (sb.musar_model(pack, model, subjects, cache=False, dynamic=False), plain),
        "musar_cache": (sb.musar_model(pack, model, subjects, cache=True), plain),
    }


def _instrument(pack, clock):
    attention = runtime.pack_module(pack, "musar.attention")
    block, mass = attention.block_attention, attention.subject_attention_mass

    def timed_block(*args):
        t = time.process_time()
        out = block(*args)
        clock["attn"] += time.process_time() - t
        return out

    def timed_mass(*args, **kwargs):
        t = time.process_time()
        out = mass(*args, **kwargs)
        clock["scores"] += time.process_time() - t
        return out

    attention.block_attention, attention.subject_attention_mass = timed_block, timed_mass


def breakdown(args) -> None:
    pack, model, subjects, plain, kontext = _setup(args.kernel)
    clock = collections.Counter()
    _instrument(pack, clock)
    configs = _configs(pack, model, subjects, plain, kontext, clock)
    for m, c in configs.values():
        sb.sample_timed(m, c, sb.SHAPES, 1)
    rows = {name: collections.defaultdict(list) for name in configs}
    for _ in range(args.rounds):
        for name, (m, c) in configs.items():
            clock.clear()
            snaps: list[dict] = []
            cpu, _ = sb.sample_timed(m, c, sb.SHAPES, sb.SHAPES["steps"],
                                     probe=lambda snaps=snaps: snaps.append(dict(clock)))
            for i, step in enumerate(cpu[1:], 1):  # steps 2..n
                a, b = snaps[i], snaps[i + 1]
                rows[name]["step"].append(step)
                for key in ("attn", "scores"):
                    rows[name][key].append(b.get(key, 0) - a.get(key, 0))
    table = []
    for name, r in rows.items():
        step, attn, scores = (common.median(r[k]) for k in ("step", "attn", "scores"))
        table.append([name, step, attn, scores, step - attn, attn / step])
    print(common.table(["config", "step CPU s", "attention s", "of which route scores s",
                        "rest s", "attention share"], table))


def ops(args) -> None:
    pack, model, subjects, plain, kontext = _setup(args.kernel)
    clock = collections.Counter()
    m, cond = _configs(pack, model, subjects, plain, kontext, clock)[args.config]
    sb.sample_timed(m, cond, sb.SHAPES, 1)
    with torch.profiler.profile() as prof:
        times, _ = sb.sample_timed(m, cond, sb.SHAPES, args.steps)
    print(f"{args.config}: CPU seconds per step " + " ".join(f"{t:.2f}" for t in times))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("breakdown", "ops"))
    ap.add_argument("--config", default="musar")
    ap.add_argument("--kernel", choices=("sdpa", "default"), default="sdpa")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    (breakdown if args.mode == "breakdown" else ops)(args)


if __name__ == "__main__":
    main()
