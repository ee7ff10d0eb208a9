"""Train a toy-world MUSAR dual LoRA by debiased diptych learning through the pack's own training
path, on single-subject pairs whose words never name a colour, then measure its gate:

    toyworld.export.export_pairs -> Subjects200K-layout parquet -> musar.train.open_training_set
    (the pack's reader + DiptychBuilder, the world's diptych template) -> nodes.train_glue.
    run_training (the function behind MUSAR_TrainDualLoRA and the musar_train CLI) ->
    musar.lora.save_dual_lora -> toyworld.gate.lora_gate (counterfactual transfer T)

    python -m toyworld.train_lora --attention static     # the method (static routing mask)
    python -m toyworld.train_lora --attention dense      # the no-routing baseline
    python -m toyworld.train_lora --steps 2 --pairs 12 --batch 2 --weights W --out O --work K --no-gate

Resumable: checkpoints every ``--checkpoint-every`` steps in ``<work>/ckpt`` (the trainer's own
format); a rerun with the same settings continues from the latest. Writes
``toy_lora_<attention>.safetensors``, ``train_lora_<attention>_log.json`` and
``lora_gate_<attention>.json`` to --out.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from . import common
from .common import loss_curve, module, run_script, write_json

logger = logging.getLogger("toyworld.lora")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attention", choices=("static", "dense"), default="static",
                   help="attention plan of training (TrainConfig.attention)")
    p.add_argument("--size", choices=common.BASE_SIZES, default=common.DEFAULT_SIZE, help="which base model's chain "
                   "(train_base --size): sets the defaults of --weights, --out and --work")
    p.add_argument("--weights", type=Path, help="toy base model folder (default: the size's weights folder)")
    p.add_argument("--out", type=Path, help="default: --weights")
    p.add_argument("--work", type=Path, help="default .cache/toyworld[/<size>]/lora_<attention>")
    p.add_argument("--pairs", type=int, default=4000, help="single-subject pairs exported")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--noisy-rank", type=int, default=4)
    p.add_argument("--subject-rank", type=int, default=64)
    p.add_argument("--prompt-dropout", type=float, default=0.1)
    p.add_argument("--t-std", type=float, default=1.7, help="timesteps sigmoid(N(0, t_std)): 1.7 is close "
                   "to uniform, like the base model's training (the trainer's default 1.0 leaves the "
                   "high-noise steps, where the colours are decided, almost untrained)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--no-gate", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    weights, work = common.run_folders(args.size)
    args.weights = args.weights or weights
    args.out, args.work = args.out or args.weights, args.work or work / f"lora_{args.attention}"
    return args


def lora_file(attention: str) -> str:
    return f"toy_lora_{attention}.safetensors"


def export(pack, work: Path, n_pairs: int, seed: int) -> Path:
    path = work / "data" / f"toy_pairs_train_{n_pairs}_{seed}.parquet"
    if not path.is_file():
        world = module(pack, "toyworld.world").World(0)
        module(pack, "toyworld.export").export_pairs(world, path.parent, n_pairs, seed, "train", filename=path.name)
    return path


def train(args) -> dict:
    pack = common.setup(threads=args.threads)
    toy, glue = module(pack, "nodes.testing.toy"), module(pack, "nodes.train_glue")
    train_mod, lora_mod = module(pack, "musar.train"), module(pack, "musar.lora")
    t0 = time.perf_counter()
    data = module(pack, "musar.train.dataset").open_training_set(
        export(pack, args.work, args.pairs, args.seed), target_width=256, target_height=128, reference_size=128,
        prompt_template=module(pack, "toyworld.world").DIPTYCH_TEMPLATE, prompt_dropout=args.prompt_dropout,
        seed=args.seed)
    config = train_mod.TrainConfig(
        steps=args.steps, learning_rate=args.lr, warmup_steps=args.warmup, noisy_rank=args.noisy_rank,
        subject_rank=args.subject_rank, batch_size=args.batch, seed=args.seed, attention=args.attention,
        t_std=args.t_std,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=2, validation_every=0)
    model, clip, vae = toy.load_toy_world(args.weights, toy.BASE_FILE)
    store = train_mod.CheckpointStore(args.work / "ckpt", f"toy_lora_{args.attention}", keep=2)
    result, _, _ = glue.run_training(model, clip, vae, data, config, store, cache_dir=args.work / "cache",
                                     resume="latest", validate=False, base_model="toy_flux")
    args.out.mkdir(parents=True, exist_ok=True)
    lora_mod.save_dual_lora(args.out / lora_file(args.attention), result.lora)
    log = write_log(args, result, data, time.perf_counter() - t0)
    if args.no_gate:
        return log
    gate = module(pack, "toyworld.gate").lora_gate(args.weights, args.out / lora_file(args.attention),
                                                   args.attention, args.work / "gate", args.threads)
    write_json(gate, args.out / f"lora_gate_{args.attention}.json")
    logger.info("LoRA gate %s: %s", "PASSED" if gate["passed"] else "NOT passed", gate["summary"])
    return {**log, "gate": gate}


def write_log(args, result, data, seconds: float) -> dict:
    keep = ("attention", "pairs", "steps", "batch", "lr", "warmup", "noisy_rank", "subject_rank",
            "prompt_dropout", "t_std", "seed")
    log = {"settings": {k: getattr(args, k) for k in keep}, "dataset": data.summary,
           "steps": result.step, "train_seconds": round(result.elapsed, 1),
           "total_seconds_this_session": round(seconds, 1), **loss_curve(result.history.raw, 50)}
    write_json(log, args.out / f"train_lora_{args.attention}_log.json")
    logger.info("done: %d steps, training %.0f s, loss %s -> %s", result.step, result.elapsed,
                log["loss_first"], log["loss_last"])
    return log


def main(argv=None) -> int:
    return run_script(parse, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
