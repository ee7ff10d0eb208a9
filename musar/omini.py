"""Reading LoRA files: MUSAR's own format and OminiControl's PEFT/diffusers subject LoRA.

OminiControl publishes subject LoRAs with diffusers FluxTransformer2DModel names
(``transformer.transformer_blocks.N.attn.to_q.lora_A.weight`` ...). ComfyUI's FLUX fuses q, k, v
into one ``qkv`` linear (double blocks) and q, k, v + MLP-in into ``linear1`` (single blocks), so
separate q / k / v adapters become one block-structured adapter on the fused module: the downs
stacked, the ups placed block-diagonally at the row offsets of q (0), k (H) and v (2H) [and the
MLP input at 3H]. The result is exact: up @ down equals the per-part deltas written into the
fused weight's rows. Loaded as the *subject* branch.
"""

from __future__ import annotations

import math
import os
import re

import torch

from .errors import LoRAFormatError
from .lora import (
    DualLoRA,
    LoRAPair,
    check_lora,
    check_tensor,
    module_role,
    parse_musar_tensors,
    read_safetensors,
)

# diffusers suffix -> (ComfyUI module suffix, part index) ; part index 0..3 = q, k, v, mlp rows
_DOUBLE = {
    "norm1.linear": ("img_mod.lin", None), "attn.to_q": ("img_attn.qkv", 0),
    "attn.to_k": ("img_attn.qkv", 1), "attn.to_v": ("img_attn.qkv", 2),
    "attn.to_out.0": ("img_attn.proj", None), "ff.net.0.proj": ("img_mlp.0", None),
    "ff.net.2": ("img_mlp.2", None),
}
_SINGLE = {
    "norm.linear": ("modulation.lin", None), "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1), "attn.to_v": ("linear1", 2), "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", None),
}
_PROMPT_SIDE = ("context_embedder", "norm1_context", "add_q_proj", "add_k_proj", "add_v_proj",
                "to_add_out", "ff_context", "time_text_embed", "norm_out", "proj_out.")
_KEY = re.compile(r"^(?:transformer\.)?(?:(transformer_blocks|single_transformer_blocks)\.(\d+)\.)?"
                  r"(.+?)\.(lora_A|lora_B|lora_down|lora_up)\.weight$")
LAYOUTS = ("musar (this pack's dual-branch format)",
           "OminiControl / PEFT diffusers (transformer.transformer_blocks.N...lora_A.weight)")


def detect_layout(tensors: dict, meta: dict) -> str:
    keys = list(tensors)
    if "musar.format_version" in meta or (keys and all(k.startswith("musar.") for k in keys)):
        return "musar"
    if keys and any(_KEY.match(k) for k in keys) and any(
            "transformer_blocks" in k or "x_embedder" in k for k in keys):
        return "omini"
    return "unknown"


def load_lora_file(path: str | os.PathLike) -> DualLoRA:
    """Read a LoRA file of any supported layout into a DualLoRA (metadata notes the layout)."""
    name = os.path.basename(os.fspath(path))
    tensors, meta = read_safetensors(path)
    layout = detect_layout(tensors, meta)
    if layout == "musar":
        lora = parse_musar_tensors(tensors, meta, name)
    elif layout == "omini":
        lora = parse_omini_tensors(tensors, name)
    else:
        sample = ", ".join(list(tensors)[:3]) or "no tensors"
        raise LoRAFormatError(f"LoRA '{name}' has an unknown layout (first keys: {sample}); "
                              f"supported: {'; '.join(LAYOUTS)}")
    return DualLoRA(lora.modules, {**lora.metadata, "musar.layout": layout, "musar.file": name})


def _comfy_name(block: str | None, idx: str | None, suffix: str, name: str):
    if block is None:
        if suffix == "x_embedder":
            return "img_in", None
    else:
        table = _DOUBLE if block == "transformer_blocks" else _SINGLE
        prefix = "double_blocks" if block == "transformer_blocks" else "single_blocks"
        if suffix in table:
            target, part = table[suffix]
            return f"{prefix}.{idx}.{target}", part
    if any(p in f"{suffix}." for p in _PROMPT_SIDE):
        raise LoRAFormatError(f"LoRA '{name}' adapts the prompt side ({suffix}); MUSAR keeps the "
                              "prompt side frozen and only reads image-side subject LoRAs")
    raise LoRAFormatError(f"LoRA '{name}': no FLUX image-side module matches {suffix!r}")


def parse_omini_tensors(tensors: dict, name: str) -> DualLoRA:
    parts: dict[str, dict] = {}
    for key, t in tensors.items():
        if key.endswith(".alpha"):
            continue
        m = _KEY.match(key)
        if not m:
            raise LoRAFormatError(f"LoRA '{name}': unexpected tensor {key!r} for a PEFT/diffusers LoRA")
        block, idx, suffix, kind = m.groups()
        module, part = _comfy_name(block, idx, suffix, name)
        slot = parts.setdefault(module, {}).setdefault(part, {"key": key.rsplit(".", 2)[0]})
        slot["down" if kind in ("lora_A", "lora_down") else "up"] = check_tensor(t, key, name)
        alpha_key = f"{slot['key']}.alpha"
        if alpha_key in tensors:
            slot["alpha"] = _alpha(tensors[alpha_key], alpha_key, name)
    modules = {m: (None, _fuse(m, p, name)) for m, p in parts.items()}
    return check_lora(DualLoRA(modules, {"musar.subject_source": "omini"}), name)


def _alpha(t, key: str, name: str) -> float:
    """A PEFT alpha: one finite number > 0 (a scalar tensor)."""
    scalar = isinstance(t, torch.Tensor) and t.numel() == 1 and not t.dtype.is_complex
    value = float(t.reshape(-1)[0]) if scalar else None
    if value is None or not math.isfinite(value) or value <= 0:
        what = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) and t.numel() != 1 else repr(value)
        raise LoRAFormatError(f"LoRA '{name}': {key!r} is {what}; expected one finite number > 0 "
                              "(a scalar alpha)")
    return value


def _checked_parts(module: str, parts: dict, name: str) -> None:
    """Each part has both factors with agreeing ranks; all parts read the same input width and
    q / k / v write the same number of rows."""
    for d in parts.values():
        for factor, kind in (("down", "lora_A"), ("up", "lora_B")):
            if factor not in d:
                raise LoRAFormatError(f"LoRA '{name}': {d['key']}.{kind}.weight is missing "
                                      f"(each adapted module of {module} needs lora_A and lora_B)")
        if d["down"].shape[0] != d["up"].shape[1]:
            raise LoRAFormatError(f"LoRA '{name}': {d['key']} ranks disagree (lora_A "
                                  f"{tuple(d['down'].shape)}, lora_B {tuple(d['up'].shape)})")
    widths = {d["key"]: d["down"].shape[1] for d in parts.values()}
    rows = {d["key"]: d["up"].shape[0] for p, d in parts.items() if p in (0, 1, 2)}
    for what, sizes in (("input widths", widths), ("q/k/v output sizes", rows)):
        if len(set(sizes.values())) > 1:
            raise LoRAFormatError(f"LoRA '{name}': the parts fused into {module} have different "
                                  f"{what} ({sizes}); expected one size - the file mixes models")


def _fuse(module: str, parts: dict, name: str) -> LoRAPair:
    """Stack part adapters into one pair for a fused module (see module docstring)."""
    _checked_parts(module, parts, name)

    def scaled_up(d):
        r = d["down"].shape[0]
        return d["up"] * (d.get("alpha", r) / r)

    if None in parts:
        if len(parts) > 1:
            raise LoRAFormatError(f"LoRA '{name}': {module} is adapted both whole and by parts")
        return LoRAPair(parts[None]["down"], scaled_up(parts[None]))
    qkv = [parts[p]["up"].shape[0] for p in (0, 1, 2) if p in parts]
    hidden = qkv[0] if qkv else parts[3]["up"].shape[0] // 4  # FLUX's MLP ratio is 4
    mlp = parts[3]["up"].shape[0] if 3 in parts else 4 * hidden
    offsets = [0, hidden, 2 * hidden, 3 * hidden]
    out_dim = 3 * hidden + (mlp if module.endswith("linear1") else 0)
    total_rank = sum(d["down"].shape[0] for d in parts.values())
    up, downs, col = torch.zeros(out_dim, total_rank), [], 0
    for part in sorted(parts):
        d = parts[part]
        r, rows = d["down"].shape[0], d["up"].shape[0]
        up[offsets[part]:offsets[part] + rows, col:col + r] = scaled_up(d)
        downs.append(d["down"])
        col += r
    return LoRAPair(torch.cat(downs), up)


def check_fits(lora: DualLoRA, shapes: dict[str, tuple[int, int]], hidden: int) -> None:
    """Every adapted module exists in the model with matching (in, out) features."""
    name = lora.metadata.get("musar.file", "LoRA")
    for module, pairs in lora.modules.items():
        module_role(module)
        if module not in shapes:
            raise LoRAFormatError(f"LoRA '{name}' adapts {module}, which this model does not have "
                                  "(it was trained for a deeper model)")
        fan_in, fan_out = shapes[module]
        for branch, pair in zip(("noisy", "subject"), pairs):
            if pair is None:
                continue
            if pair.down.shape[1] != fan_in or pair.up.shape[0] != fan_out:
                raise LoRAFormatError(
                    f"LoRA '{name}' has {branch} rank {pair.rank} for a module of "
                    f"{pair.down.shape[1]}->{pair.up.shape[0]} features but the model's {module} is "
                    f"{fan_in}->{fan_out} ({hidden} wide) - it was trained for a different model")
