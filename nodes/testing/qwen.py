"""Qwen-Image(-Edit) stand-ins from ComfyUI's own classes, for the tests and ``--tiny``: the
MMDiT (``supported_models.QwenImage``) at a tiny width, its Qwen2.5-VL text encoder with the real
tokenizer, the edit templates and a one-layer vision tower, and its Wan 2.1 VAE at a tiny width.
Real Qwen-Image is 24 heads x 128 wide, 60 blocks, text 3584 wide."""

from __future__ import annotations

import inspect

import comfy.ldm.qwen_image.model
import comfy.ldm.wan.vae
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.llama
import comfy.text_encoders.qwen_image
import comfy.text_encoders.qwen_vl
import torch

from ...musar.errors import ModelError
from .standins import axes_for, seeded_state_dict, standin_state_dict

QWEN_TE_WIDTH = 64  # the tiny Qwen2.5-VL's hidden size = the MMDiT's text width


def qwen_image_unet_config(heads: int = 2, head_dim: int = 32, depth: int = 2,
                           ref_method: str = "index") -> dict:
    """A Qwen-Image MMDiT config at a tiny width (real: 24 heads x 128, 60 blocks, text 3584):
    its RoPE axes in Qwen's 16:56:56 proportion. ``ref_method`` "index_timestep_zero" is
    Qwen-Image-Edit-2511 (ComfyUI 0.33+; older ComfyUI has no such option)."""
    config = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16,
                  num_layers=depth, attention_head_dim=head_dim, num_attention_heads=heads,
                  joint_attention_dim=QWEN_TE_WIDTH, axes_dims_rope=tuple(axes_for(head_dim)))
    accepted = inspect.signature(comfy.ldm.qwen_image.model.QwenImageTransformer2DModel).parameters
    if "default_ref_method" in accepted:
        config["default_ref_method"] = ref_method
    elif ref_method != "index":
        raise ModelError(f"this ComfyUI's Qwen-Image has no reference method {ref_method!r} "
                         "(Qwen-Image-Edit-2511 needs ComfyUI 0.33 or newer)")
    return config


def build_qwen_image(unet_config: dict, seed: int = 0, dtype: torch.dtype = torch.float32,
                     compute_dtype: torch.dtype | None = None) -> comfy.model_patcher.ModelPatcher:
    """A Qwen-Image(-Edit) ModelPatcher through ComfyUI's supported_models.QwenImage."""
    cfg = comfy.supported_models.QwenImage(dict(unet_config))
    cfg.set_inference_dtype(dtype, compute_dtype)
    model = cfg.get_model({})
    sd = standin_state_dict(model.diffusion_model, seed)
    model.load_model_weights({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}, "")
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


class _TinyQwenVL(comfy.text_encoders.llama.Qwen25_7BVLI):
    """Qwen2.5-VL (ComfyUI's class, its language model and vision tower) at a tiny size: the
    language model from the config, the vision tower 32 wide and one layer deep (the real one
    is 1280 wide, 32 deep and would not fit a CPU test)."""

    def __init__(self, config_dict, dtype, device, operations):
        torch.nn.Module.__init__(self)
        config = comfy.text_encoders.llama.Qwen25_7BVLI_Config(**config_dict)
        self.num_layers = config.num_hidden_layers
        self.model = comfy.text_encoders.llama.Llama2_(config, device=device, dtype=dtype, ops=operations)
        self.visual = comfy.text_encoders.qwen_vl.Qwen2VLVisionTransformer(
            hidden_size=32, output_hidden_size=config.hidden_size, intermediate_size=64, num_heads=2,
            num_layers=1, device=device, dtype=dtype, ops=operations)
        self.dtype = dtype


class _TinyQwenVLModel(comfy.text_encoders.qwen_image.Qwen25_7BVLIModel):
    def __init__(self, device="cpu", layer="last", layer_idx=None, dtype=None, attention_mask=True,
                 model_options=None):
        comfy.sd1_clip.SDClipModel.__init__(
            self, device=device, layer=layer, layer_idx=layer_idx, dtype=dtype,
            textmodel_json_config=dict(hidden_size=QWEN_TE_WIDTH, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=2,
                                       num_key_value_heads=1),
            special_tokens={"pad": 151643}, layer_norm_hidden_state=False, model_class=_TinyQwenVL,
            enable_attention_masks=attention_mask, return_attention_masks=attention_mask,
            model_options=model_options or {})


class _TinyQwenImageTE(comfy.text_encoders.qwen_image.QwenImageTEModel):
    def __init__(self, device="cpu", dtype=None, model_options=None):
        comfy.sd1_clip.SD1ClipModel.__init__(self, device=device, dtype=dtype, name="qwen25_7b",
                                             clip_model=_TinyQwenVLModel, model_options=model_options or {})


def build_qwen_clip(seed: int = 0) -> comfy.sd.CLIP:
    """Qwen-Image's text encoder (Qwen2.5-VL with its vision tower, its real tokenizer and its
    edit templates) at a tiny width: TextEncodeQwenImageEditPlus runs on it as on the real one."""
    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.qwen_image.QwenImageTokenizer,
                                                    _TinyQwenImageTE)
    clip = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float32})
    clip.cond_stage_model.load_state_dict(seeded_state_dict(clip.cond_stage_model, seed, 0.2), strict=False)
    return clip


def build_wan_vae(seed: int = 0, width: int = 8) -> comfy.sd.VAE:
    """Qwen-Image's VAE shape (Wan 2.1: 16 channels, 8x down, video latents) at a tiny width,
    recognised by ComfyUI's own VAE detection."""
    module = comfy.ldm.wan.vae.WanVAE(dim=width, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                      attn_scales=[], temperal_downsample=[False, True, True])
    return comfy.sd.VAE(sd=seeded_state_dict(module, seed, 0.05), dtype=torch.float32)
