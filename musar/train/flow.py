"""Flow matching on the X tokens of a MUSAR forward, and the frozen base model around it.

ComfyUI's FLUX convention: x_t = (1 - t) x0 + t noise, the model receives t (= sigma, in
[0, 1]) and predicts the velocity noise - x0. t = sigmoid(N(t_mean, t_std)) (logit-normal)
[chosen, as OminiControl]. The loss is the MSE on the X tokens only (the forward returns nothing
else); conditions are clean (timestep 0, guidance 1), static routing is on (``attention="dense"``:
off, the no-routing baseline).
"""

from __future__ import annotations

import contextlib
import hashlib

import torch

from ..errors import TrainingError
from ..flux_forward import ForwardInputs, musar_forward
from ..lora import target_modules
from ..routes import RoutePlan
from .rng import timestep_and_noise
from .samples import Batch

PLANS = {"static": RoutePlan(static=True), "dense": RoutePlan(static=False)}  # config.attention


def model_signature(dm) -> dict:
    """Architecture and a weight fingerprint of a FLUX diffusion model (duck-typed)."""
    depth, single = len(dm.double_blocks), len(dm.single_blocks)
    shapes = {}
    for name in target_modules(depth, single):
        m = dm.get_submodule(name)
        shapes[name] = [int(m.in_features), int(m.out_features)]
    digest = hashlib.sha256()
    for name in ("img_in", "double_blocks.0.img_attn.qkv", "final_layer.linear"):
        try:
            w = dm.get_submodule(name).weight
        except AttributeError:
            continue
        sample = w.detach().reshape(-1)[:: max(1, w.numel() // 512)][:512].float().cpu()
        digest.update(name.encode() + sample.numpy().tobytes())
    return {"hidden": int(dm.hidden_size), "depth": depth, "depth_single_blocks": single,
            "guidance_embed": bool(dm.params.guidance_embed), "shapes": shapes,
            "fingerprint": digest.hexdigest()[:16]}


def check_plain(dm) -> None:
    """The base model must carry no MUSAR LoRA wrappers (an object-patched clone is loaded)."""
    patched = [n for n, m in dm.named_modules() if getattr(m, "_musar_branches", None)]
    if patched:
        raise TrainingError(f"the MODEL has MUSAR patches applied ({patched[0]} is a dual-LoRA "
                            f"wrapper, {len(patched)} modules in all): expected the plain FLUX model "
                            "from the loader - connect the loader's MODEL directly to the trainer, "
                            "not the output of MUSAR Load Dual LoRA / Apply Routing")


@contextlib.contextmanager
def frozen_base(dm):
    """Freeze the base model for training and undo it afterwards: parameters stop requiring
    gradients, and tensors made under inference mode (ComfyUI loads models there) are swapped
    for normal copies while training runs (autograd cannot save inference tensors)."""
    swapped, flags = [], []
    with torch.inference_mode(False):
        for module in dm.modules():
            for store, make in ((module._parameters, _param), (module._buffers, _copy)):
                for name, value in list(store.items()):
                    if value is None:
                        continue
                    if value.is_inference():
                        store[name] = make(value)
                        swapped.append((store, name, value))
                    elif isinstance(value, torch.nn.Parameter) and value.requires_grad:
                        value.requires_grad_(False)
                        flags.append(value)
        try:
            yield
        finally:
            for store, name, value in swapped:
                store[name] = value
            for value in flags:
                value.requires_grad_(True)


def _param(t: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(t.detach().clone(), requires_grad=False)


def _copy(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone()


def batch_loss(dm, batch: Batch, seeds: list[int], lora_modules, config, dtype: torch.dtype,
               device) -> torch.Tensor:
    """Sum over the batch of each sample's mean squared velocity error (fp32 scalar)."""
    drawn = [timestep_and_noise(seeds[p], tuple(batch.x0.shape[1:]), config.t_mean, config.t_std)
             for p in batch.positions]
    t = torch.cat([d[0] for d in drawn]).to(device)
    noise = torch.stack([d[1] for d in drawn]).to(device)
    x0 = batch.x0
    tt = t[:, None, None]
    xt = (1 - tt) * x0 + tt * noise
    target = noise - x0
    guidance = torch.full_like(t, config.guidance) if dm.params.guidance_embed else None
    inp = ForwardInputs(xt.to(dtype), batch.x_ids, batch.context.to(dtype),
                        [c.to(dtype) for c in batch.captions], batch.subjects.to(dtype),
                        batch.subject_ids, t.to(dtype), batch.pooled.to(dtype),
                        None if guidance is None else guidance.to(dtype))
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                              enabled=config.precision == "bf16")
    with autocast:
        pred = musar_forward(dm, inp, batch.layout, PLANS[config.attention], lora=lora_modules,
                             gradient_checkpointing=config.gradient_checkpointing)
    return (pred.float() - target.float()).pow(2).mean(dim=(1, 2)).sum()
