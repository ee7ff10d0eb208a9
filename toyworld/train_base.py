"""Train the toy world's base model: a tiny FLUX-architecture text-to-image model built through
ComfyUI's own classes (``nodes.standins.build_flux``), trained with the pack's differentiable
FLUX forward (``musar.flux_forward.musar_forward`` with zero subjects = a plain FLUX forward,
every weight trainable).

    python -m toyworld.train_base                       # the committed run (see docs/TOY_WORLD.md)
    python -m toyworld.train_base --steps 4 --out /tmp/x --square 64 --wide 16   # smoke

Deterministic (every step's batch, timesteps and noise come from a generator seeded with
(seed, step)) and resumable: a checkpoint (weights, EMA, AdamW state, loss history) is written
atomically every ``--checkpoint-every`` steps to ``<work>/base_ckpt.safetensors``; a rerun with
the same settings continues from it. Output in ``--out``: toy_codec / toy_text_encoder (fitted
once, then reused), toy_flux.safetensors (EMA weights, fp16, config in the metadata) and
train_base_log.json (settings, loss curve, time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from . import common
from .common import Clock, loss_curve, module, run_script, save_safetensors, write_json
from .data import ToyEncoders, build_pool

logger = logging.getLogger("toyworld.base")
MODEL = dict(hidden=128, heads=4, depth=2, single_depth=2, context_dim=64, vec_dim=32, guidance=False)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=common.WEIGHTS_DIR)
    p.add_argument("--work", type=Path, default=common.CACHE_DIR / "base_run")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32, help="square images per step (wide steps: half)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--wide-share", type=float, default=0.15, help="fraction of steps on 128x256 diptychs")
    p.add_argument("--prompt-dropout", type=float, default=0.1)
    p.add_argument("--square", type=int, default=24000, help="square scenes in the pool")
    p.add_argument("--wide", type=int, default=4000, help="two-panel images in the pool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--init-from", type=Path, help="phase 2+: start from the weights, EMA and AdamW "
                   "state of a finished run's checkpoint (fresh schedule over --steps)")
    p.add_argument("--phase", type=int, default=0, help="data / noise stream of this phase (use 1 "
                   "with --init-from so the batches differ from phase 0's)")
    p.add_argument("--stop-after", type=int, default=0, help="stop after this many steps of this "
                   "session (checkpointed; rerun to continue)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def toy_files(pack, out: Path, world):
    """Codec and text encoder: loaded from ``out`` when present, else fitted and written there."""
    toy, mt = module(pack, "nodes.toy"), module(pack, "toyworld")
    if not (out / toy.CODEC_FILE).is_file():
        save_safetensors(mt.ToyCodec.fit_world(world, n_images=256, seed=0).state_dict(), out / toy.CODEC_FILE)
    if not (out / toy.TEXT_FILE).is_file():
        save_safetensors(mt.ToyTextEncoder(seed=0).state_dict(), out / toy.TEXT_FILE)
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


def step_batch(args, pools, step: int):
    """The seeded batch of one step: (latents (B,16,h,w), prompts, t (B,), noise)."""
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step + args.phase * 10_000_019)
    wide = bool(torch.rand(1, generator=g) < args.wide_share)
    latents, prompts = pools["wide" if wide else "square"]
    b = max(1, args.batch // 2) if wide else args.batch
    idx = torch.randint(0, latents.shape[0], (b,), generator=g)
    drop = torch.rand(b, generator=g) < args.prompt_dropout
    x0 = latents[idx].float()
    t = torch.sigmoid(torch.randn(b, generator=g))
    noise = torch.randn(x0.shape, generator=g)
    return x0, ["" if d else prompts[i] for i, d in zip(idx.tolist(), drop.tolist())], t, noise


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


def init_model(pack, seed: int):
    st = module(pack, "nodes.standins")
    config = st.flux_unet_config(**MODEL)
    model = st.build_flux(config, seed=seed)
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
    keep = ("steps", "batch", "lr", "warmup", "ema", "wide_share", "prompt_dropout", "square", "wide", "seed")
    extra = {"phase": args.phase, "init_from": args.init_from.name} if args.init_from else {}
    return {"model": MODEL, **{k: getattr(args, k) for k in keep}, **extra}


def train(args) -> dict:
    pack = common.setup(threads=args.threads)
    world = module(pack, "toyworld").World(seed=0, panel=128)
    clip, vae = toy_files(pack, args.out, world)
    model, dm, config = init_model(pack, args.seed)
    enc = ToyEncoders(pack, model, clip, vae)
    tag = hashlib.sha256((args.out / module(pack, "nodes.toy").CODEC_FILE).read_bytes()).hexdigest()
    pools = {k: build_pool(pack, world, enc, k, n, args.seed, tag) for k, n in
             (("square", args.square), ("wide", args.wide))}
    settings, ckpt = settings_of(args), args.work / "base_ckpt.safetensors"
    return run_loop(args, pack, dm, enc, pools, settings, ckpt, config)


def run_loop(args, pack, dm, enc, pools, settings, ckpt, config) -> dict:
    with torch.inference_mode(False):
        for p in dm.parameters():  # ComfyUI builds under inference mode: make normal tensors
            p.data = p.data.clone()
        dm.requires_grad_(True)
        opt = torch.optim.AdamW(dm.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
        ema = {k: v.detach().clone() for k, v in dm.state_dict().items()}
        step, losses, elapsed, before = 0, [], 0.0, {}
        if args.init_from:
            before = previous_phase(args.init_from, dm, ema, opt)
        if ckpt.is_file():
            step, losses, elapsed = load_checkpoint(ckpt, dm, ema, opt, settings)
            logger.info("resumed at step %d", step)
        clock, stop = Clock(elapsed), args.steps if not args.stop_after else min(args.steps, step + args.stop_after)
        while step < stop:
            x0, prompts, t, noise = step_batch(args, pools, step)
            for group in opt.param_groups:
                group["lr"] = lr_at(args, step)
            loss = loss_of(pack, dm, enc, x0, prompts, t, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dm.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                for k, v in dm.state_dict().items():
                    ema[k].lerp_(v, 1 - args.ema)
            losses.append(loss.item())
            step += 1
            if step % 25 == 0:
                logger.info("step %d/%d loss %.4f (mean of 25: %.4f) %.0f s", step, args.steps,
                            losses[-1], sum(losses[-25:]) / 25, clock())
            if step % args.checkpoint_every == 0 or step == stop:
                save_checkpoint(ckpt, dm, ema, opt, step, losses, clock(), settings)
    if step < args.steps:
        logger.info("stopped at step %d of %d (checkpoint %s)", step, args.steps, ckpt)
        return {"stopped": step}
    return finish(args, pack, ema, config, losses, clock(), settings, before)


def previous_phase(path: Path, dm, ema, opt) -> dict:
    """Weights, EMA and optimizer state of an earlier phase; its losses, time and settings."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        settings = json.loads(f.metadata()["settings"])
    step, losses, elapsed = load_checkpoint(path, dm, ema, opt, settings)
    logger.info("phase start: weights of %s (step %d)", path, step)
    return {"steps": step, "seconds": round(elapsed, 1), "settings": settings, "losses": losses}


def finish(args, pack, ema, config, losses, seconds: float, settings: dict, before: dict) -> dict:
    import comfy.utils

    from_pack = module(pack, "nodes.standins")
    sd = {k: v.to(torch.float16).contiguous() for k, v in ema.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    comfy.utils.save_torch_file(sd, str(args.out / "toy_flux.safetensors"),
                                metadata={from_pack.CONFIG_METADATA_KEY: json.dumps(config)})
    phases = [*before.get("phases", []), {k: before[k] for k in ("steps", "seconds", "settings")}] if before else []
    losses = [*before.get("losses", []), *losses]
    n = len(losses)
    log = {"settings": settings, "previous_phases": phases, "params": sum(v.numel() for v in ema.values()),
           "steps": n, "seconds": round(seconds + sum(p["seconds"] for p in phases), 1),
           **loss_curve(losses, 100)}
    write_json(log, args.out / "train_base_log.json")
    logger.info("done: %d steps in %.0f s, loss %.4f -> %.4f", n, seconds, log["loss_first"] or 0,
                log["loss_last"] or 0)
    return log


def main(argv=None) -> int:
    return run_script(parse, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
