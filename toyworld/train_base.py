"""Train the toy world's base model: a tiny FLUX-architecture text-to-image model built through
ComfyUI's own classes (``nodes.testing.standins.build_flux``), trained with the pack's differentiable
FLUX forward (``musar.flux_forward.musar_forward`` with zero subjects = a plain FLUX forward,
every weight trainable) on scenes of 1-4 blocks and 128 x 256 diptychs (``toyworld.data``), then
measured against its gate (``toyworld.gate``).

    python -m toyworld.train_base                        # the committed run (docs/TOY_WORLD.md)
    python -m toyworld.train_base --steps 4 --out /tmp/x --batch 4 --no-gate   # smoke

Deterministic (every step's batch, timesteps and noise come from generators seeded with
(seed, step)) and resumable: a checkpoint (weights, EMA, AdamW state, loss history) is written
atomically every ``--checkpoint-every`` steps to ``<work>/base_ckpt.safetensors``; a rerun with
the same settings continues from it. Output in ``--out``: toy_codec / toy_text_encoder (made
once, then reused), toy_flux.safetensors (EMA weights, fp16, config in the metadata),
train_base_log.json (settings, loss curve, time) and base_gate.json (the gate's measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from . import common, parked
from .common import Clock, loss_curve, module, run_script, save_safetensors, write_json
from .data import ToyEncoders, step_batch

logger = logging.getLogger("toyworld.base")
SIZES = {  # [chosen]; "small" is the 1.8 M model, "medium" the ~6 M fallback of the gate
    "small": dict(hidden=128, heads=4, depth=2, single_depth=2, context_dim=64, vec_dim=32, guidance=False),
    "medium": dict(hidden=192, heads=4, depth=3, single_depth=3, context_dim=64, vec_dim=32, guidance=False),
}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=common.BASE_SIZES, default=common.DEFAULT_SIZE,
                   help="medium: the ~6 M base that passes its gate; small: the 1.8 M one that does not")
    p.add_argument("--out", type=Path, help="default: .cache/toyworld/<size>/weights")
    p.add_argument("--work", type=Path, help="default: .cache/toyworld[/<size>]/base_run")
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch", type=int, default=32, help="square images per step (diptych steps: half)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--wide-share", type=float, default=0.2, help="fraction of steps on 128x256 diptychs")
    p.add_argument("--prompt-dropout", type=float, default=0.1)
    p.add_argument("--t-sampling", choices=("uniform", "logit-normal"), default="uniform",
                   help="training timesteps: uniform in [0, 1] (covers the high-noise steps where the "
                        "sampler spends half its steps and the text decides the colours) or "
                        "sigmoid(N(0, 1))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--gate-every", type=int, default=2000, help="also measure the gate on the EMA "
                   "weights every N steps (logged to <work>/gates.jsonl)")
    p.add_argument("--no-gate", action="store_true", help="skip the gate after training")
    p.add_argument("--stop-after", type=int, default=0, help="stop after this many steps of this "
                   "session (checkpointed; rerun to continue)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    weights, work = common.run_folders(args.size)
    args.out, args.work = args.out or weights, args.work or work / "base_run"
    return args


def toy_files(pack, out: Path):
    """Codec and text encoder: loaded from ``out`` when present, else made and written there."""
    toy = module(pack, "nodes.testing.toy")
    if not (out / toy.CODEC_FILE).is_file():
        save_safetensors(module(pack, "toyworld.codec").CellCodec.for_world(0).state_dict(), out / toy.CODEC_FILE)
    if not (out / toy.TEXT_FILE).is_file():
        save_safetensors(module(pack, "toyworld.textenc").ToyTextEncoder(seed=0).state_dict(), out / toy.TEXT_FILE)
    return toy.build_clip(toy.load_text_encoder(out)), toy.build_vae(toy.load_codec(out))


def masked_attention(key_mask: torch.Tensor):
    """The ``attn`` kernel of musar_forward with padded prompt tokens hidden as keys."""
    mask = key_mask[:, None, None, :]

    def attn(q, k, v):
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return o.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    return attn


def text_batch(enc: ToyEncoders, prompts: list[str]):
    feats = [enc.prompt(p) for p in prompts]
    length = max(f[0].shape[1] for f in feats)
    ctx = torch.zeros(len(prompts), length, feats[0][0].shape[-1])
    valid = torch.zeros(len(prompts), length, dtype=torch.bool)
    for i, (c, _) in enumerate(feats):
        ctx[i, : c.shape[1]], valid[i, : c.shape[1]] = c[0], True
    return ctx, valid, torch.cat([f[1] for f in feats])


def step_inputs(args, world, enc: ToyEncoders, step: int):
    """The seeded batch of one step: (latents (B,16,h,w), prompts, t (B,), noise)."""
    cells, prompts, _ = step_batch(world, args.seed, 0, step, args.batch, args.wide_share, args.prompt_dropout)
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    x0 = enc.latents(cells)
    u = torch.rand(x0.shape[0], generator=g) if args.t_sampling == "uniform" else \
        torch.sigmoid(torch.randn(x0.shape[0], generator=g))
    return x0, prompts, u, torch.randn(x0.shape, generator=g)


def loss_of(pack, dm, enc, x0, prompts, t, noise):
    ff, lay = module(pack, "musar.flux_forward"), module(pack, "musar.layout")
    tt = t[:, None, None, None]
    tokens, grid = lay.pack_latent((1 - tt) * x0 + tt * noise)
    target, _ = lay.pack_latent(noise - x0)
    ctx, valid, pooled = text_batch(enc, prompts)
    b = x0.shape[0]
    ids = lay.grid_ids(*grid).expand(b, -1, -1)
    inp = ff.ForwardInputs(tokens, ids, ctx, [], tokens.new_zeros(1, 0, tokens.shape[-1]),
                           ids.new_zeros(0, 3), t, pooled, None)
    key_mask = torch.cat([valid, torch.ones(b, tokens.shape[1], dtype=torch.bool)], 1)
    pred = ff.musar_forward(dm, inp, lay.TokenLayout(ctx.shape[1], tokens.shape[1]),
                            attn=masked_attention(key_mask))
    return F.mse_loss(pred, target)


def lr_at(args, step: int) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def init_model(pack, size: str, seed: int):
    st = module(pack, "nodes.testing.standins")
    config = st.flux_unet_config(**SIZES[size])
    model = st.build_flux(config, seed=seed, std=0.02)  # the init every toy base was trained from
    dm = model.model.diffusion_model
    with torch.no_grad():
        dm.final_layer.linear.weight.zero_()  # zero output at init (adaLN-zero style)
        dm.final_layer.linear.bias.zero_()
    return model, dm, config


def save_checkpoint(path: Path, dm, ema, opt, step: int, losses, elapsed: float, settings: dict):
    tensors = {f"model.{k}": v.detach() for k, v in dm.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.items()})
    names = [n for n, _ in dm.named_parameters()]
    for name, p in dm.named_parameters():
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"optim.{name}.{key}"] = state[key]
        if "step" in state:
            tensors[f"optim.{name}.step"] = torch.as_tensor(state["step"]).reshape(1).float()
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
    meta = {"step": step, "elapsed": elapsed, "settings": json.dumps(settings), "n_params": len(names)}
    save_safetensors(tensors, path, meta)


def load_checkpoint(path: Path, dm, ema, opt, settings: dict):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        if json.loads(meta["settings"]) != settings:
            raise SystemExit(f"{path} was written with other settings; delete it or use another --work")
        t = {k: f.get_tensor(k) for k in f.keys()}
    dm.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    ema.update({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
    for name, p in dm.named_parameters():
        if f"optim.{name}.exp_avg" in t:
            opt.state[p] = {"exp_avg": t[f"optim.{name}.exp_avg"], "exp_avg_sq": t[f"optim.{name}.exp_avg_sq"],
                            "step": t[f"optim.{name}.step"].reshape(())}
    return int(meta["step"]), t["losses"].tolist(), float(meta["elapsed"])


def settings_of(args) -> dict:
    keep = ("size", "steps", "batch", "lr", "warmup", "ema", "wide_share", "prompt_dropout", "t_sampling", "seed")
    return {"model": SIZES[args.size], **{k: getattr(args, k) for k in keep}}


@dataclasses.dataclass(frozen=True)
class Run:
    """What one toy base training is, for the shared loop: the seeded loss of a step, where the
    model and its log go, the files an interim model needs beside it and the gate."""

    loss: Callable[[int], torch.Tensor]  # step -> loss on the step's seeded batch
    ckpt: Path
    settings: dict
    model_file: str  # in args.out
    side_files: tuple[str, ...]  # codec, text encoder: copied next to an interim model
    log_file: str
    gate: Callable[[Path, Path, Path], dict]  # (model file, its folder, work folder) -> result
    gate_file: str
    name: str  # "base", "refbase": the logger toyworld.<name>

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"toyworld.{self.name}")


def train(args) -> dict:
    pack = common.setup(threads=args.threads)
    world = module(pack, "toyworld.world").World(seed=0)
    clip, vae = toy_files(pack, args.out)
    model, dm, config = init_model(pack, args.size, args.seed)
    enc = ToyEncoders(pack, model, clip, vae)
    toy = module(pack, "nodes.testing.toy")

    def loss(step: int) -> torch.Tensor:
        return loss_of(pack, dm, enc, *step_inputs(args, world, enc, step))

    run = Run(loss, args.work / "base_ckpt.safetensors", settings_of(args), "toy_flux.safetensors",
              (toy.CODEC_FILE, toy.TEXT_FILE), "train_base_log.json", module(pack, "toyworld.gate").base_gate,
              "base_gate.json", "base")
    return train_and_gate(args, pack, dm, config, run)


def train_and_gate(args, pack, dm, config: dict, run: Run) -> dict:
    """The loop, then (unless stopped early or --no-gate) the gate of the final EMA model."""
    log = run_loop(args, pack, dm, config, run)
    if "stopped" in log or args.no_gate:
        return log
    result = run.gate(args.out / run.model_file, args.out, args.work / "gate", args.threads)
    write_json(result, args.out / run.gate_file)
    run.log.info("%s gate %s: %s", run.name, "PASSED" if result["passed"] else "NOT passed", result["summary"])
    return {**log, "gate": result}


def run_loop(args, pack, dm, config: dict, run: Run) -> dict:
    """AdamW with warm-up, gradient clipping at 1 and an EMA of the weights; checkpointed every
    ``--checkpoint-every`` steps (a rerun resumes bit-identically), optional interim gates."""
    with torch.inference_mode(False):
        for p in dm.parameters():  # ComfyUI builds under inference mode: make normal tensors
            p.data = p.data.clone()
        dm.requires_grad_(True)
        opt = torch.optim.AdamW(dm.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
        ema = {k: v.detach().clone() for k, v in dm.state_dict().items()}
        step, losses, elapsed = 0, [], 0.0
        if parked.unpark(run.ckpt, run.settings):
            run.log.info("continuing from the checkpoint parked in %s", parked.FOLDER)
        if run.ckpt.is_file():
            step, losses, elapsed = load_checkpoint(run.ckpt, dm, ema, opt, run.settings)
            run.log.info("resumed at step %d", step)
        clock, stop = Clock(elapsed), args.steps if not args.stop_after else min(args.steps, step + args.stop_after)
        while step < stop:
            for group in opt.param_groups:
                group["lr"] = lr_at(args, step)
            loss = run.loss(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dm.parameters(), 1.0)
            opt.step()
            decay = min(args.ema, (1 + step) / (10 + step))  # EMA warm-up: no bias to the init
            with torch.no_grad():
                for k, v in dm.state_dict().items():
                    ema[k].lerp_(v, 1 - decay)
            losses.append(loss.item())
            step += 1
            if step % 25 == 0:
                run.log.info("step %d/%d loss %.4f (mean of 25: %.4f) %.0f s", step, args.steps, losses[-1],
                             sum(losses[-25:]) / 25, clock())
            if step % args.checkpoint_every == 0 or step == stop:
                save_checkpoint(run.ckpt, dm, ema, opt, step, losses, clock(), run.settings)
            if args.gate_every and step % args.gate_every == 0 and step < args.steps:
                interim_gate(args, pack, ema, config, step, run)
    if step < args.steps:
        run.log.info("stopped at step %d of %d (checkpoint %s)", step, args.steps, run.ckpt)
        return {"stopped": step}
    return finish(args, pack, ema, config, losses, clock(), run)


def save_model(ema: dict, config: dict, path: Path, pack) -> None:
    import comfy.utils

    sd = {k: v.to(torch.float16).contiguous() for k, v in ema.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    comfy.utils.save_torch_file(sd, str(tmp), metadata={module(pack, "nodes.testing.standins").CONFIG_METADATA_KEY:
                                                          json.dumps(config)})
    os.replace(tmp, path)


def interim_gate(args, pack, ema, config, step: int, run: Run) -> None:
    """The gate on the EMA weights of this step, appended to <work>/gates.jsonl."""
    folder = args.work / "interim"
    folder.mkdir(parents=True, exist_ok=True)
    for name in run.side_files:
        shutil.copy2(args.out / name, folder / name)
    save_model(ema, config, folder / run.model_file, pack)
    result = run.gate(folder / run.model_file, folder, args.work / "gate_interim", args.threads)
    with (args.work / "gates.jsonl").open("a") as f:
        f.write(json.dumps({"step": step, **result}) + "\n")
    run.log.info("gate at step %d: %s", step, result["summary"])


def finish(args, pack, ema, config, losses, seconds: float, run: Run) -> dict:
    save_model(ema, config, args.out / run.model_file, pack)
    log = {"settings": run.settings, "params": sum(v.numel() for v in ema.values()), "steps": len(losses),
           "seconds": round(seconds, 1), **loss_curve(losses, 100)}
    write_json(log, args.out / run.log_file)
    run.log.info("done: %d steps in %.0f s, loss %.4f -> %.4f", len(losses), seconds, log["loss_first"] or 0,
                log["loss_last"] or 0)
    return log


def main(argv=None) -> int:
    return run_script(parse, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
