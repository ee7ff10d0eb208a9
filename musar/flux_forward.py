"""A differentiable FLUX.1 forward for MUSAR training, written against the model's modules.

Inference runs ComfyUI's own blocks through official hooks. Training cannot: ComfyUI's blocks add
residuals in place, which breaks autograd. This forward calls the very same submodules
(``blk.img_attn.qkv(x)``, ``blk.img_norm1(x)`` ... so fp8 / GGUF casting still applies) with
out-of-place residuals, per-segment modulation (conditions: timestep 0, guidance 1), routed
attention and the dual-branch LoRA added to the adapted modules' outputs. A tier-2 test proves it
equals the ComfyUI inference path. The model is duck-typed: no ComfyUI import.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention import AttnFn, routed_attention, sdpa
from .layout import TokenLayout
from .lora import LoRAPair, apply_dual, modulation_classes
from .routes import RoutePlan


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: int = 10000,
                       time_factor: float = 1000.0) -> torch.Tensor:
    """FLUX's sinusoidal timestep embedding ([cos | sin], t scaled by 1000)."""
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return emb.to(t) if torch.is_floating_point(t) else emb


def apply_rope(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """Rotate (B, heads, L, D) by FLUX's (B, 1, L, D/2, 2, 2) rotary table."""
    x_ = x.to(pe.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = pe[..., 0] * x_[..., 0] + pe[..., 1] * x_[..., 1]
    return out.reshape(*x.shape).type_as(x)


@dataclasses.dataclass
class ForwardInputs:
    x: torch.Tensor  # (B, x_len, C*4) packed noisy latent tokens (model latent space)
    x_ids: torch.Tensor  # (B, x_len, 3)
    context: torch.Tensor  # (B, P, context_dim) main prompt features
    captions: list[torch.Tensor]  # per subject (B or 1, n_i, context_dim)
    subjects: torch.Tensor  # (B or 1, sum n_Ic, C*4) packed reference tokens
    subject_ids: torch.Tensor  # (sum n_Ic, 3)
    timesteps: torch.Tensor  # (B,) in [0, 1]
    y: torch.Tensor  # (B, vec_in_dim) pooled text
    guidance: torch.Tensor | None = None  # (B,)


class _Adapted:
    """Calls a module and adds the dual-LoRA deltas registered for its name."""

    def __init__(self, lora: Mapping[str, tuple[LoRAPair | None, LoRAPair | None]],
                 s_noisy: float, s_subject: float):
        self.lora, self.s_noisy, self.s_subject = lora, s_noisy, s_subject

    def __call__(self, module, name: str, x: torch.Tensor, classes, dim: int = -2):
        out = module(x)
        pairs = self.lora.get(name)
        if pairs is None:
            return out
        return apply_dual(x, out, classes, pairs[0], pairs[1], self.s_noisy, self.s_subject, dim)


def _modulate(x, rows, dims, scale_idx, shift_idx):
    parts = [x[:, a:b] * (1 + rows[scale_idx][:, r]) + rows[shift_idx][:, r] for a, b, r in dims]
    return torch.cat(parts, 1)


def _gate(x, rows, dims, gate_idx):
    return torch.cat([x[:, a:b] * rows[gate_idx][:, r] for a, b, r in dims], 1)


def _mod_rows(module, adapted, name, vec_rows, n, classes=True):
    silu = F.silu(vec_rows)[:, :, None]  # (B, 2, 1, H): [sampling, clean-condition]
    out = adapted(module, name, silu, modulation_classes(silu), dim=1) if classes else module(silu)
    return out.chunk(n, dim=-1)  # each (B, 2, 1, H)


def _qkv(out, heads):
    b, length, _ = out.shape
    return out.view(b, length, 3, heads, -1).permute(2, 0, 3, 1, 4)


def double_block(blk, i, img, txt, vec_rows, pe, layout, plan, attn, adapted):
    name = f"double_blocks.{i}."
    im = _mod_rows(blk.img_mod.lin, adapted, name + "img_mod.lin", vec_rows, 6)
    tm = _mod_rows(blk.txt_mod.lin, adapted, "", vec_rows, 6, classes=False)
    d_img, d_txt = layout.modulation_dims("img"), layout.modulation_dims("txt")
    cls_img = layout.token_classes("img")
    heads = blk.num_heads
    iq, ik, iv = _qkv(adapted(blk.img_attn.qkv, name + "img_attn.qkv",
                              _modulate(blk.img_norm1(img), im, d_img, 1, 0), cls_img), heads)
    iq, ik = blk.img_attn.norm(iq, ik, iv)
    tq, tk, tv = _qkv(blk.txt_attn.qkv(_modulate(blk.txt_norm1(txt), tm, d_txt, 1, 0)), heads)
    tq, tk = blk.txt_attn.norm(tq, tk, tv)
    q, k = apply_rope(torch.cat([tq, iq], 2), pe), apply_rope(torch.cat([tk, ik], 2), pe)
    a = routed_attention(q, k, torch.cat([tv, iv], 2), layout, plan, attn)
    ta, ia = a[:, :txt.shape[1]], a[:, txt.shape[1]:]
    img = img + _gate(adapted(blk.img_attn.proj, name + "img_attn.proj", ia, cls_img), im, d_img, 2)
    h = blk.img_mlp[1](blk.img_mlp[0](_modulate(blk.img_norm2(img), im, d_img, 4, 3)))
    img = img + _gate(adapted(blk.img_mlp[2], name + "img_mlp.2", h, cls_img), im, d_img, 5)
    txt = txt + _gate(blk.txt_attn.proj(ta), tm, d_txt, 2)
    txt = txt + _gate(blk.txt_mlp(_modulate(blk.txt_norm2(txt), tm, d_txt, 4, 3)), tm, d_txt, 5)
    return img, txt


def single_block(blk, i, x, vec_rows, pe, layout, plan, attn, adapted):
    name = f"single_blocks.{i}."
    m = _mod_rows(blk.modulation.lin, adapted, name + "modulation.lin", vec_rows, 3)
    dims, cls = layout.modulation_dims("joint"), layout.token_classes("joint")
    h = adapted(blk.linear1, name + "linear1", _modulate(blk.pre_norm(x), m, dims, 1, 0), cls)
    qkv, mlp = torch.split(h, [3 * blk.hidden_size, h.shape[-1] - 3 * blk.hidden_size], dim=-1)
    q, k, v = _qkv(qkv, blk.num_heads)
    q, k = blk.norm(q, k, v)
    a = routed_attention(apply_rope(q, pe), apply_rope(k, pe), v, layout, plan, attn)
    out = adapted(blk.linear2, name + "linear2", torch.cat([a, blk.mlp_act(mlp)], 2), cls)
    return x + _gate(out, m, dims, 2)


def modulation_vector(dm, t: torch.Tensor, guidance: torch.Tensor | None, y: torch.Tensor | None,
                      dtype: torch.dtype, embed: Callable = timestep_embedding) -> torch.Tensor:
    """FLUX's modulation vector: time_in(t) [+ guidance_in(guidance)] [+ vector_in(y)], as
    ComfyUI's forward_orig builds it. ``embed`` is the sinusoidal embedding (ComfyUI passes its
    own ``timestep_embedding``; this module's equals it). Handles models without ``vector_in``
    and calls without pooled text (``y`` None: zeros)."""
    vec = dm.time_in(embed(t, 256).to(dtype))
    if dm.params.guidance_embed and guidance is not None:
        vec = vec + dm.guidance_in(embed(guidance, 256).to(dtype))
    if getattr(dm, "vector_in", None) is not None:
        if y is None:
            y = torch.zeros(t.shape[0], dm.params.vec_in_dim, device=t.device, dtype=dtype)
        vec = vec + dm.vector_in(y[:, :dm.params.vec_in_dim].to(device=t.device, dtype=dtype))
    return vec


def clean_vector(dm, y: torch.Tensor | None, with_guidance: bool, batch: int, device,
                 dtype: torch.dtype, embed: Callable = timestep_embedding) -> torch.Tensor:
    """The condition tokens' modulation vector, (batch, hidden): timestep 0 and guidance 1
    [chosen, as OminiControl]. Used by the inference patch and the training forward alike."""
    zero = torch.zeros(batch, device=device, dtype=dtype)
    return modulation_vector(dm, zero, zero + 1 if with_guidance else None, y, dtype, embed)


def musar_forward(dm, inp: ForwardInputs, layout: TokenLayout, plan: RoutePlan | None = None,
                  lora: Mapping = (), s_noisy: float = 1.0, s_subject: float = 1.0,
                  attn: AttnFn = sdpa, gradient_checkpointing: bool = False) -> torch.Tensor:
    """Velocity prediction for the X tokens: (B, x_len, C*4)."""
    b = inp.x.shape[0]
    plan = plan or RoutePlan()
    adapted = _Adapted(dict(lora), s_noisy, s_subject)
    img = adapted(dm.img_in, "img_in", inp.x, None)
    ic = adapted(dm.img_in, "img_in", inp.subjects.expand(b, -1, -1), _all_subject(inp.subjects))
    img = torch.cat([img, ic], 1)
    vec_t = modulation_vector(dm, inp.timesteps, inp.guidance, inp.y, inp.y.dtype)
    vec_0 = clean_vector(dm, inp.y, inp.guidance is not None, b, inp.y.device, inp.y.dtype)
    vec_rows = torch.stack([vec_t, vec_0], 1)
    txt = dm.txt_in(torch.cat([inp.context] + [c.expand(b, -1, -1) for c in inp.captions], 1))
    ids = torch.cat([torch.zeros(b, txt.shape[1], 3, dtype=inp.x_ids.dtype, device=inp.x.device),
                     inp.x_ids, inp.subject_ids.to(inp.x_ids).expand(b, -1, -1)], 1)
    pe = dm.pe_embedder(ids)
    run = (lambda f, *a: checkpoint(f, *a, use_reentrant=False)) if gradient_checkpointing \
        else (lambda f, *a: f(*a))
    for i, blk in enumerate(dm.double_blocks):
        img, txt = run(lambda im, tx, blk=blk, i=i: double_block(
            blk, i, im, tx, vec_rows, pe, layout, plan, attn, adapted), img, txt)
    x = torch.cat([txt, img], 1)
    for i, blk in enumerate(dm.single_blocks):
        x = run(lambda h, blk=blk, i=i: single_block(blk, i, h, vec_rows, pe, layout, plan, attn, adapted), x)
    x = x[:, layout.x]
    return dm.final_layer(x, vec_t)


def _all_subject(tokens: torch.Tensor) -> torch.Tensor:
    from .layout import SUBJECT

    return torch.full((tokens.shape[1],), SUBJECT, dtype=torch.int8)
