"""``python -m musar_train --config train.yaml``: train a MUSAR dual LoRA outside the UI.

FLUX, its text encoders and VAE are loaded by ComfyUI used as a library (``musar_run.runtime``;
the same loaders UNETLoader / DualCLIPLoader / VAELoader use), or tiny random stand-ins with
``model: tiny``. The loop is the one the MUSAR_TrainDualLoRA node runs (nodes/train_glue.py).

Data parallel: ``torchrun --nproc_per_node K -m musar_train --config train.yaml``. Each process
trains its share of every step's global batch (batch_size x grad_accumulation samples per process),
gradients are averaged over processes (gloo on CPU, nccl on GPU), only process 0 writes
checkpoints, validation images and the LoRA. Config keys: musar_train/example.yaml and
docs/TRAINING.md. Exit codes: 0 done, 2 bad command line / config, 4 training failed, 130 stopped.

Ctrl-C (one process): sets ComfyUI's own interrupt flag, exactly what the UI's Cancel does, so the
trainer stops inside the running step and checkpoints the last finished one (resume with
``--set resume=latest``); a second Ctrl-C aborts at once. Under torchrun the launcher owns the
signals: a stopped run resumes from its last periodic checkpoint. Process 0 shows a progress bar
of the training steps on stderr.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from musar_run import runtime

from .config import ConfigError, RunConfig, load_config

logger = logging.getLogger("musar_train")
EXIT_USAGE, EXIT_FAILED, EXIT_STOPPED = 2, 4, 130


def _pack_module(pack, name: str):
    from musar_run import runtime

    return runtime.pack_module(pack, name)


def setup_distributed(device: str):
    """(rank, world, local_rank, use_cuda) from torchrun's environment; initialises the group."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local)  # ComfyUI's get_torch_device() follows the current device
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, cuda


def load_models(cfg: RunConfig, pack):
    """(MODEL, CLIP, VAE, base model name) through ComfyUI's own loading code."""
    import comfy.sd
    import comfy.utils
    import folder_paths
    import torch

    if cfg.model.get("kind") == "tiny":
        standins = _pack_module(pack, "nodes.testing.standins")
        testing = _pack_module(pack, "nodes.testing.loaders")
        if cfg.model["size"] not in testing.SIZES:
            raise ConfigError(f"model.size {cfg.model['size']!r}: expected one of {list(testing.SIZES)}")
        spec, seed = testing.SIZES[cfg.model["size"]], cfg.model["seed"]
        model = standins.build_flux(standins.flux_unet_config(**spec), seed=seed)
        return model, standins.build_clip(seed), standins.build_vae(seed), f"tiny:{cfg.model['size']}"
    options = {}
    dtype = cfg.model.get("weight_dtype", "default")
    if dtype != "default":
        options["dtype"] = torch.float8_e5m2 if dtype == "fp8_e5m2" else torch.float8_e4m3fn
        options["fp8_optimizations"] = dtype == "fp8_e4m3fn_fast"
    model = comfy.sd.load_diffusion_model(cfg.model["unet"], model_options=options)
    clip = comfy.sd.load_clip(ckpt_paths=[cfg.model["clip_l"], cfg.model["t5"]],
                              embedding_directory=folder_paths.get_folder_paths("embeddings"),
                              clip_type=comfy.sd.CLIPType.FLUX)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(cfg.model["vae"]))
    return model, clip, vae, Path(cfg.model["unet"]).name


def write_outputs(result, out_dir: Path, name: str, save_lora) -> Path:
    """The LoRA file and the loss history as CSV (process 0 only)."""
    lora_path = out_dir / f"{name}.safetensors"
    save_lora(lora_path, result.lora)
    with open(out_dir / f"{name}_loss.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "smoothed"])
        for i, (raw, smooth) in enumerate(zip(result.history.raw, result.history.smoothed()), 1):
            writer.writerow([i, repr(raw), repr(smooth)])
    return lora_path


def train(cfg: RunConfig) -> int:
    rank, world, cuda = setup_distributed(cfg.device)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    base = Path(tempfile.mkdtemp(prefix=f"musar-train-{rank}-"))
    try:
        return _train(cfg, rank, world, cuda, base)
    finally:  # ComfyUI's scratch base folder (its models/, input/, temp/); outputs live elsewhere
        shutil.rmtree(base, ignore_errors=True)


def _train(cfg: RunConfig, rank: int, world: int, cuda: bool, base: Path) -> int:
    root = logging.getLogger()
    level = root.level
    if level > logging.INFO:  # ComfyUI's start-up log (missing optional extras ...) unless -v
        root.setLevel(logging.ERROR)
    try:
        runtime.bootstrap(base_dir=base, cpu=not cuda)
        pack = runtime.load_pack()
    finally:
        root.setLevel(level)
    glue = _pack_module(pack, "nodes.train_glue")
    mt = _pack_module(pack, "musar.train")
    dataset = _pack_module(pack, "musar.train.dataset")
    lora = _pack_module(pack, "musar.lora")
    config = mt.TrainConfig.from_mapping(cfg.train)  # cheap checks first
    settings = _pack_module(pack, "musar.train.settings").DatasetSettings(**cfg.dataset)
    data = dataset.open_training_set(**dataclasses.asdict(settings))
    out_dir = Path(cfg.output_dir).expanduser()
    store = mt.CheckpointStore(out_dir / "checkpoints", cfg.name, config.keep_checkpoints)
    model, clip, vae, base_name = load_models(cfg, pack)
    if rank == 0:
        logger.info("%s; %d process(es), %d samples per step", data.summary, world,
                    config.samples_per_step(world))
    t0 = time.perf_counter()
    try:
        with _ctrl_c_stops(world), _progress_bar(config.steps if rank == 0 else 0):
            result, curve, preview = glue.run_training(
                model, clip, vae, data, config, store, cache_dir=Path(cfg.cache_dir or out_dir / "encoding_cache"),
                resume=cfg.resume, validate=rank == 0, dist=mt.Dist(rank, world), base_model=base_name)
    except _interrupt_type():
        logger.warning("stopped; the last completed step is in %s", store.latest())
        return EXIT_STOPPED
    if rank == 0:
        path = write_outputs(result, out_dir, cfg.name, lora.save_dual_lora)
        _save_image(curve, out_dir / f"{cfg.name}_loss.png")
        if result.preview is not None:
            _save_image(result.preview, out_dir / f"{cfg.name}_validation.png")
        s = result.history.summary()
        print(f"saved {path}")
        print(json.dumps({"steps": result.step, "processes": world, "seconds": round(time.perf_counter() - t0, 1),
                          "loss_first_10pct": s["first"], "loss_last_10pct": s["last"],
                          "checkpoint": str(result.checkpoint) if result.checkpoint else None}))
    return 0


@contextmanager
def _ctrl_c_stops(world: int):
    """While training in one process, the first Ctrl-C raises ComfyUI's interrupt flag instead of
    KeyboardInterrupt (the trainer then keeps the last finished step); the second aborts."""
    if world > 1 or threading.current_thread() is not threading.main_thread():
        yield
        return
    import comfy.model_management as mm

    def stop(signum, frame):
        signal.signal(signal.SIGINT, previous)
        logger.warning("Ctrl-C: stopping after the running step, keeping the last finished one "
                       "(Ctrl-C again to abort without saving)")
        mm.interrupt_current_processing(True)

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _progress_bar(steps: int):
    """A terminal bar of the ``steps`` training steps over ComfyUI's progress events (the trainer
    reports through ComfyUI's ProgressBar; other bars, e.g. validation sampling, are not shown).
    ``steps`` 0: no bar."""
    import comfy.utils
    from tqdm import tqdm

    bar = tqdm(total=steps, desc="training", unit="step", file=sys.stderr, disable=not steps)

    def hook(value, total, preview=None, node_id=None):
        if total == steps and value > bar.n:
            bar.update(value - bar.n)

    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook if steps else old)
    try:
        yield
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
        bar.close()


def _interrupt_type():
    import comfy.model_management

    return comfy.model_management.InterruptProcessingException


def _save_image(image, path: Path) -> None:
    import numpy as np
    from PIL import Image

    array = (image[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m musar_train", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, type=Path, help="YAML config (see musar_train/example.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=10 (VALUE is YAML)")
    p.add_argument("-v", "--verbose", action="store_true", help="show ComfyUI's INFO log")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    try:
        cfg = load_config(args.config, args.overrides)
        return train(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:  # MusarError (a ValueError) from the pack: a clear message, no trace
        if runtime.is_musar_error(e):
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return EXIT_FAILED
        raise
    finally:
        _shutdown()


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
