"""Tiny FLUX-architecture MODEL / CLIP / VAE stand-ins built from real ComfyUI classes.

Used by the ``MUSAR/testing`` loader node (so ``make demo`` runs on a CPU with no downloads), by
the tier-2 tests and by the benchmarks. Weights are seeded, so every build is reproducible.
Real FLUX.1 is the same code with hidden 3072, 24 heads, 19 double + 38 single blocks.

FLUX.2 [dev] stand-ins go through ComfyUI's own ``supported_models.Flux2`` / ``model_base.Flux2``
with the architecture switches ComfyUI's model detection sets for a FLUX.2 file (global
modulation, SiLU-gated MLPs, no biases, 4 RoPE axes, patch size 1, 128 latent channels,
reference method "index" x 10), so their state dicts carry FLUX.2's detection keys
(``double_stream_modulation_img.lin.weight`` ...). Real FLUX.2 [dev] is the same code with
hidden 6144, 48 heads, 8 double + 48 single blocks and a Mistral 3 text encoder; the stand-in
text encoder is the tiny FLUX.1 one (Mistral's tokenizer data is not available offline).
"""

from __future__ import annotations

import dataclasses
import json
import logging

import comfy.ldm.flux.model
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.flux
import comfy.text_encoders.llama
import comfy.utils
import torch
from comfy.ldm.models.autoencoder import AutoencoderKL

from ...musar.errors import ModelError

logger = logging.getLogger(__name__)
CONFIG_METADATA_KEY = "musar.flux_config"


def axes_for(head_dim: int) -> list[int]:
    """RoPE axes (index, row, col) in FLUX's 16:56:56 proportion, each even, summing to head_dim."""
    first = max(2, (head_dim // 8) // 2 * 2)
    rest = head_dim - first
    row = (rest // 2) // 2 * 2
    return [first, row, rest - row]


def flux_unet_config(hidden: int = 128, heads: int = 4, depth: int = 2, single_depth: int = 2,
                     context_dim: int = 64, vec_dim: int = 32, guidance: bool = True) -> dict:
    if hidden % heads or (hidden // heads) % 2:
        raise ModelError(f"hidden size {hidden} must split into {heads} heads of even width")
    return dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=vec_dim,
                context_in_dim=context_dim, hidden_size=hidden, mlp_ratio=4.0, num_heads=heads,
                depth=depth, depth_single_blocks=single_depth, axes_dim=axes_for(hidden // heads),
                theta=10000, patch_size=2, qkv_bias=True, guidance_embed=guidance)


def flux2_unet_config(hidden: int = 128, heads: int = 4, depth: int = 2, single_depth: int = 2,
                      context_dim: int = 64, guidance: bool = True) -> dict:
    """A FLUX.2 [dev]-architecture config (what ComfyUI's detection sets for a FLUX.2 file) at a
    tiny width: 4 RoPE axes of equal width, as FLUX.2's [32, 32, 32, 32] at head width 128.
    ``guidance`` False: no guidance embedding, as FLUX.2 [klein]."""
    head = hidden // heads if hidden % heads == 0 else 0
    if head == 0 or head % 8:
        raise ModelError(f"hidden size {hidden} must split into {heads} heads of a width "
                         "divisible by 8 (four even RoPE axes)")
    return dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None,
                context_in_dim=context_dim, hidden_size=hidden, mlp_ratio=3.0, num_heads=heads,
                depth=depth, depth_single_blocks=single_depth, axes_dim=[head // 4] * 4,
                theta=2000, patch_size=1, qkv_bias=False, guidance_embed=guidance,
                global_modulation=True, mlp_silu_act=True, ops_bias=False,
                default_ref_method="index", ref_index_scale=10.0)


def detected_fields(unet_config: dict) -> dict:
    """``unet_config`` plus the FluxParams fields this ComfyUI requires and model detection would
    fill from a state dict: ``txt_ids_dims`` (ComfyUI >= 0.2x: the RoPE axes text positions
    count along; none for FLUX.1, the fourth axis for FLUX.2, as its detection sets)."""
    config = dict(unet_config)
    fields = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
    if "txt_ids_dims" in fields and "txt_ids_dims" not in config:
        config["txt_ids_dims"] = [3] if config.get("image_model") == "flux2" else []
    return config


def _norm_scale(key: str, value: torch.Tensor) -> bool:
    """A 1-D weight of a module named norm* (Qwen-Image's norm_q, norm_added_k ...)."""
    parts = key.split(".")
    return value.ndim == 1 and len(parts) > 1 and parts[-2].startswith("norm")


def seeded_state_dict(module: torch.nn.Module, seed: int, std: float = 0.02) -> dict:
    """Deterministic weights: N(0, std) matrices, zero biases, unit norm scales (batch-norm
    statistics: zero mean, unit variance)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in sorted(module.state_dict().items()):
        if key.endswith("num_batches_tracked"):
            out[key] = value.clone()
        elif key.endswith(".scale") or key.endswith("norm.weight") or key.endswith("running_var") \
                or _norm_scale(key, value):
            out[key] = torch.ones(value.shape, dtype=torch.float32)
        elif key.endswith("bias") or key.endswith("running_mean"):
            out[key] = torch.zeros(value.shape, dtype=torch.float32)
        else:
            out[key] = torch.randn(value.shape, generator=gen, dtype=torch.float32) * std
    return out


STANDIN_GAIN = 1.13  # matrix weights N(0, (gain / sqrt(fan_in))^2): std 0.1 at width 128
STANDIN_QK_SCALE = 2.0  # the q / k RMSNorm scales: attention 4x sharper than at scale 1
QK_NORMS = ("query_norm", "key_norm", "norm_q", "norm_k", "norm_added_q", "norm_added_k")


def standin_state_dict(module: torch.nn.Module, seed: int) -> dict:
    """Random stand-in weights under which routing visibly changes what the model computes.

    With N(0, 0.02) weights every block barely touches the residual stream and attention is
    close to uniform, so blocking reference <-> reference attention moved a sampled latent by
    about 1e-6, under the 1e-4 tolerance of the equivalence tests: a wrong mask would have
    passed. Fan-in scaled weights and sharper attention keep activations of order 1 at any
    width and make every routing effect (static, dynamic, per family) differ from the unrouted
    model by far more than that tolerance; tests assert it next to each equivalence."""
    sd = seeded_state_dict(module, seed, 1.0)
    out = {}
    for key, value in sd.items():
        if value.ndim >= 2 and value.is_floating_point():
            value = value * (STANDIN_GAIN / value.shape[-1] ** 0.5)
        elif any(f"{name}." in key for name in QK_NORMS):
            value = value * STANDIN_QK_SCALE
        out[key] = value
    return out


def build_flux(unet_config: dict, state_dict: dict | None = None, seed: int = 0,
               dtype: torch.dtype = torch.float32, compute_dtype: torch.dtype | None = None,
               std: float | None = None) -> comfy.model_patcher.ModelPatcher:
    """A FLUX (or FLUX.2: ``image_model`` "flux2") ModelPatcher through ComfyUI's own model
    config / model_base classes. With a ``compute_dtype`` the weights stay in ``dtype`` (e.g. fp8)
    and ComfyUI's manual-cast ops compute in ``compute_dtype``, as UNETLoader's fp8 weight_dtype
    does. Without a ``state_dict`` the weights are ``standin_state_dict(seed)``, or plain
    N(0, ``std``) matrices where ``std`` is given (the toy world's training init)."""
    family = {"flux": comfy.supported_models.Flux, "flux2": comfy.supported_models.Flux2}
    cfg = family[unet_config["image_model"]](detected_fields(unet_config))
    cfg.set_inference_dtype(dtype, compute_dtype)
    model = cfg.get_model({})
    if state_dict is not None:
        sd = state_dict
    elif std is not None:
        sd = seeded_state_dict(model.diffusion_model, seed, std)
    else:
        sd = standin_state_dict(model.diffusion_model, seed)
    model.load_model_weights({k: v.to(dtype) for k, v in sd.items()}, "")
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def infer_flux_config(sd: dict) -> dict:
    """FLUX.1 config from tensor shapes (ComfyUI 0.3.75's detection hard-codes 24 heads)."""
    try:
        hidden = sd["img_in.weight"].shape[0]
        head_dim = sd["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
        depth = len({k.split(".")[1] for k in sd if k.startswith("double_blocks.")})
        single = len({k.split(".")[1] for k in sd if k.startswith("single_blocks.")})
        return flux_unet_config(hidden, hidden // head_dim, depth, single,
                                sd["txt_in.weight"].shape[1], sd["vector_in.in_layer.weight"].shape[1],
                                "guidance_in.in_layer.weight" in sd)
    except KeyError as e:
        raise ModelError(f"not a FLUX.1 diffusion model file: tensor {e} is missing") from None


def load_flux_file(path: str, dtype: torch.dtype = torch.float32):
    sd, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    config = json.loads((metadata or {}).get(CONFIG_METADATA_KEY) or "null") or infer_flux_config(sd)
    return build_flux(config, state_dict=sd, dtype=dtype), config


def build_clip(seed: int = 0, t5_dim: int = 64, clip_dim: int = 32) -> comfy.sd.CLIP:
    """FLUX's dual text encoder (CLIP-L + T5) with tiny widths, real tokenizers."""
    options = {
        "t5xxl_model_config": {"d_model": t5_dim, "d_kv": 32, "num_heads": max(1, t5_dim // 32),
                               "d_ff": 2 * t5_dim, "num_layers": 1},
        "clip_l_model_config": {"hidden_size": clip_dim, "intermediate_size": 2 * clip_dim,
                          "num_attention_heads": 2, "num_hidden_layers": 1,
                          "projection_dim": clip_dim},
        "dtype": torch.float32,
    }
    target = comfy.supported_models_base.ClipTarget(
        comfy.text_encoders.flux.FluxTokenizer, comfy.text_encoders.flux.flux_clip())
    clip = comfy.sd.CLIP(target=target, model_options=options)
    clip.cond_stage_model.load_state_dict(seeded_state_dict(clip.cond_stage_model, seed, 0.2),
                                          strict=False)
    return clip


def build_vae(seed: int = 0, width: int = 32) -> comfy.sd.VAE:
    """A 16-channel, 8x-downscaling AutoencoderKL (FLUX's latent shape) of tiny width."""
    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3,
                "out_ch": 3, "ch": width, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1,
                "attn_resolutions": [], "dropout": 0.0}
    params = {"ddconfig": ddconfig, "embed_dim": 16}
    sd = seeded_state_dict(AutoencoderKL(**params), seed, 0.05)
    vae = comfy.sd.VAE(sd=sd, config={"params": params}, dtype=torch.float32)
    vae.latent_channels = 16
    return vae


def build_flux2_vae(seed: int = 0, width: int = 32) -> comfy.sd.VAE:
    """FLUX.2's latent shape: a 32-channel, 8x-downscaling AutoencoderKL whose latents are
    patchified 2x2 and batch-normalised (ComfyUI's ``batch_norm_latent``) into 128 channels at
    1/16 of the image size, as the FLUX.2 VAE; tiny width."""
    ddconfig = {"double_z": True, "z_channels": 32, "resolution": 256, "in_channels": 3,
                "out_ch": 3, "ch": width, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1,
                "attn_resolutions": [], "dropout": 0.0, "batch_norm_latent": True}
    params = {"ddconfig": ddconfig, "embed_dim": 32}
    sd = seeded_state_dict(AutoencoderKL(**params), seed, 0.05)
    vae = comfy.sd.VAE(sd=sd, config={"params": params}, dtype=torch.float32)
    vae.latent_channels, vae.downscale_ratio, vae.upscale_ratio = 128, 16, 16
    return vae


# ---- FLUX.2 [klein] ----------------------------------------------------------------------------
KLEIN_TE_WIDTH = 32  # tiny Qwen3's hidden size; klein taps three layers: text width 3 x this


def klein_unet_config(hidden: int = 128, heads: int = 4, depth: int = 2, single_depth: int = 2) -> dict:
    """FLUX.2 [klein]: the FLUX.2 architecture without guidance embedding, text from Qwen3."""
    return flux2_unet_config(hidden, heads, depth, single_depth, context_dim=3 * KLEIN_TE_WIDTH,
                             guidance=False)


def build_klein_clip(seed: int = 0) -> comfy.sd.CLIP:
    """FLUX.2 [klein]'s text encoder (Qwen3 with its tokenizer and template, three layers tapped)
    at a tiny width. Needs a ComfyUI that has klein (0.33 or newer)."""
    flux_te = comfy.text_encoders.flux
    if not hasattr(flux_te, "KleinTokenizer"):
        raise ModelError("this ComfyUI has no FLUX.2 [klein] text encoder (added after 0.3.75)")

    class TinyQwen3(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", layer=(0, 1, 2), layer_idx=None, dtype=None,
                     attention_mask=True, model_options=None):
            super().__init__(device=device, layer=list(layer), layer_idx=layer_idx, dtype=dtype,
                             textmodel_json_config=dict(hidden_size=KLEIN_TE_WIDTH, intermediate_size=64,
                                                        num_hidden_layers=3, num_attention_heads=2,
                                                        num_key_value_heads=1),
                             special_tokens={"pad": 151643}, layer_norm_hidden_state=False,
                             model_class=comfy.text_encoders.llama.Qwen3_4B,
                             enable_attention_masks=attention_mask,
                             return_attention_masks=attention_mask, model_options=model_options or {})

    class TinyKleinTE(flux_te.Flux2TEModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            super().__init__(device=device, dtype=dtype, name="qwen3_4b", model_options=model_options or {},
                             clip_model=TinyQwen3)

    target = comfy.supported_models_base.ClipTarget(flux_te.KleinTokenizer, TinyKleinTE)
    clip = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float32})
    clip.cond_stage_model.load_state_dict(seeded_state_dict(clip.cond_stage_model, seed, 0.2), strict=False)
    return clip
