"""Train the toy world's MUSAR dual LoRA by debiased diptych learning, through the pack's own
training path on single-subject pairs only:

    World.export_pairs -> Subjects200K-layout parquet -> musar.train.open_training_set (the
    pack's reader + DiptychBuilder) -> nodes.train_glue.run_training (the function behind
    MUSAR_TrainDualLoRA and the musar_train CLI: ComfyUI encoders from the toy MODEL / CLIP /
    VAE, musar.train.Trainer, static routing, dual-branch LoRA) -> musar.lora.save_dual_lora

    python -m toyworld.train_lora                      # the committed run (docs/TOY_WORLD.md)
    python -m toyworld.train_lora --steps 3 --pairs 16 --batch 2 --weights W --out O --work K  # smoke

Resumable: checkpoints every ``--checkpoint-every`` steps in ``<work>/ckpt`` (the trainer's own
format); a rerun with the same settings continues from the latest. Writes
``toy_musar_lora.safetensors`` and ``train_lora_log.json`` (settings, loss curve, time) to --out.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from . import common
from .common import loss_curve, module, run_script, write_json

logger = logging.getLogger("toyworld.lora")
LORA_FILE = "toy_musar_lora.safetensors"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=common.WEIGHTS_DIR, help="toy base model folder")
    p.add_argument("--out", type=Path, default=common.WEIGHTS_DIR)
    p.add_argument("--work", type=Path, default=common.CACHE_DIR / "lora_run")
    p.add_argument("--pairs", type=int, default=2000, help="single-subject pairs exported")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--noisy-rank", type=int, default=4)
    p.add_argument("--subject-rank", type=int, default=64)
    p.add_argument("--prompt-dropout", type=float, default=0.1)
    p.add_argument("--cond-dropout", type=float, default=0.0)
    p.add_argument("--descriptions", choices=("full", "category"), default="full",
                   help="panel descriptions (the diptych prompt) name the whole subject ('a red striped "
                        "star on grass') or only its category ('a star on grass'); the condition "
                        "captions always name the whole subject")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def export(pack, world, work: Path, n_pairs: int, seed: int, descriptions: str = "full") -> Path:
    path = work / "data" / f"toy_pairs_train_{n_pairs}_{seed}.parquet"
    if not path.is_file():
        module(pack, "toyworld").export_pairs(world, path.parent, n_pairs, seed, "train", filename=path.name)
    if descriptions == "full":
        return path
    generic = path.with_name(path.stem + "_category.parquet")
    if not generic.is_file():
        category_descriptions(path, generic)
    return generic


def category_descriptions(src: Path, dst: Path) -> None:
    """The same rows with description_0/1 naming only the category: 'a red striped star on
    grass' -> 'a star on grass' (item and category unchanged)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(src)
    rows = table.column("description").to_pylist()
    for d in rows:
        for key in ("description_0", "description_1"):
            d[key] = d[key].replace(f"a {d['item']}", f"a {d['category']}", 1)
    column = pa.array(rows, type=table.schema.field("description").type)
    table = table.set_column(table.schema.get_field_index("description"), "description", column)
    pq.write_table(table.replace_schema_metadata(table.schema.metadata), dst)


def train(args) -> dict:
    os.environ["MUSAR_TOY_WEIGHTS"] = str(args.weights.resolve())
    pack = common.setup(threads=args.threads)
    toy, glue = module(pack, "nodes.toy"), module(pack, "nodes.train_glue")
    train_mod, lora_mod = module(pack, "musar.train"), module(pack, "musar.lora")
    world = module(pack, "toyworld").World(seed=0, panel=128)
    t0 = time.perf_counter()
    parquet = export(pack, world, args.work, args.pairs, args.seed, args.descriptions)
    data = module(pack, "musar.train.dataset").open_training_set(
        parquet, target_size=(128, 256), cond_size=128, prompt_dropout=args.prompt_dropout,
        cond_dropout=args.cond_dropout, seed=args.seed)
    config = train_mod.TrainConfig(
        steps=args.steps, learning_rate=args.lr, warmup_steps=args.warmup, noisy_rank=args.noisy_rank,
        subject_rank=args.subject_rank, batch_size=args.batch, seed=args.seed,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=2, validate_every=0)
    model, clip, vae = toy.load_toy_world(args.weights, toy.BASE_FILE)
    store = train_mod.CheckpointStore(args.work / "ckpt", "toy_lora", keep=2)
    result, curve, _ = glue.run_training(model, clip, vae, data, config, store,
                                         cache_dir=args.work / "cache", resume="latest", validate=False,
                                         base_model="toy_flux")
    args.out.mkdir(parents=True, exist_ok=True)
    lora_mod.save_dual_lora(args.out / LORA_FILE, result.lora)
    return write_log(args, result, data, time.perf_counter() - t0)


def write_log(args, result, data, seconds: float) -> dict:
    keep = ("pairs", "steps", "batch", "lr", "warmup", "noisy_rank", "subject_rank", "prompt_dropout",
            "cond_dropout", "descriptions", "seed")
    log = {"settings": {k: getattr(args, k) for k in keep}, "dataset": data.summary,
           "steps": result.step, "train_seconds": round(result.elapsed, 1),
           "total_seconds_this_session": round(seconds, 1), **loss_curve(result.history.raw, 50)}
    write_json(log, args.out / "train_lora_log.json")
    logger.info("done: %d steps, training %.0f s, loss %s -> %s", result.step, result.elapsed,
                log["loss_first"], log["loss_last"])
    return log


def main(argv=None) -> int:
    return run_script(parse, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
