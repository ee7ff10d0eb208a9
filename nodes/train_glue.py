"""What the trainer needs from ComfyUI: encoders, a validation sampler, progress, cancel.

Shared by the MUSAR_TrainDualLoRA node and the ``musar_train`` CLI, so both train the same way:
``run_training(model, clip, vae, training_set, config, store, ...)``.

* encoders: VAE encode -> ``process_latent_in`` (model latent space), CLIP/T5 encode (prompt
  features + pooled; subject captions with padding removed, as MUSAR_Subject does);
* validation: samples through the real ComfyUI path (MUSAR_LoadDualLoRA's patcher + static
  routing + ``comfy.sample.sample`` + VAE decode) with the current LoRA, fixed seed and subjects;
* progress: ``comfy.utils.ProgressBar`` (ComfyUI's Cancel interrupts through it) and the
  websocket events ``musar.train.progress`` / ``musar.train.done`` the web chart draws.
"""

from __future__ import annotations

import hashlib
import logging
import math

import comfy.model_management as mm
import comfy.sample
import comfy.utils
import numpy as np
import torch

from ..musar.errors import TrainingError
from ..musar.settings import RoutingSettings
from ..musar.subjects import Subject, SubjectSet
from ..musar.train import Callbacks, Encoders, Trainer, placeholder_image, render_loss_curve
from . import families, patcher
from .lora import apply_dual_lora
from .subject import encode_caption

logger = logging.getLogger(__name__)
VALIDATION_STEPS, VALIDATION_GUIDANCE = 20, 3.5  # [chosen] FLUX.1-dev defaults


def fingerprint(module: torch.nn.Module, extra: str = "") -> str:
    """A cheap weight fingerprint: names, shapes and a strided sample of every tensor."""
    digest = hashlib.sha256(extra.encode())
    for name, t in module.state_dict().items():
        flat = t.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy()
        digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode() + sample.tobytes())
    return digest.hexdigest()[:16]


def to_image(pil) -> torch.Tensor:
    """PIL RGB -> ComfyUI IMAGE (1, H, W, 3) float in 0..1."""
    return torch.from_numpy(np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0)[None]


def check_model(model) -> None:
    """A plain FLUX.1 MODEL: no MUSAR routing or dual-LoRA object patches on it."""
    families.subject_model(model)
    to = model.model_options.get("transformer_options", {})
    wrapped = [k for k, v in model.object_patches.items() if getattr(v, "_musar_branches", None)]
    if to.get(patcher.ATTACHMENT) is not None or wrapped:
        what = "MUSAR Apply Routing" if to.get(patcher.ATTACHMENT) is not None else "MUSAR Load Dual LoRA"
        raise TrainingError(f"the MODEL already has MUSAR patches ({what}); expected the plain FLUX "
                            "model: connect the loader's MODEL straight to MUSAR Train Dual LoRA")


def load_plain(model) -> None:
    """Load ``model`` with its own modules: ComfyUI 0.3.75 leaves a clone's object patches (e.g.
    MUSAR dual-LoRA wrappers of an earlier generation) installed when the plain patcher loads;
    clones share the backup of the replaced modules, so the plain patcher can put them back."""
    model.unpatch_model(unpatch_weights=False)
    params = model.model.diffusion_model.parameters()
    if model.load_device != model.offload_device and any(p.is_inference() for p in params):
        # weights made under inference mode (an earlier generation loaded them) cannot be saved
        # for backward; moved again outside inference mode they become normal tensors, instead
        # of the trainer holding a second copy (frozen_base) in VRAM
        mm.unload_all_models()
    mm.load_models_gpu([model])


def make_encoders(model, clip, vae) -> Encoders:
    process_in = model.model.process_latent_in

    @torch.no_grad()
    def image(pixels: torch.Tensor) -> torch.Tensor:
        return process_in(vae.encode(pixels.permute(0, 2, 3, 1)).float()).float().cpu()

    @torch.no_grad()
    def prompt(text: str):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return cond.float().cpu(), pooled.float().cpu()

    fmt = type(model.model.latent_format).__name__
    namespace = "/".join((fingerprint(vae.first_stage_model, fmt),
                          fingerprint(clip.cond_stage_model)))
    return Encoders(image=image, prompt=prompt, caption=torch.no_grad()(lambda t: encode_caption(clip, t)),
                    namespace=f"comfy:{namespace}")


class Validator:
    """Samples one image with the current LoRA through ComfyUI (fixed subjects, prompt, seed)."""

    @torch.no_grad()
    def __init__(self, model, clip, vae, training_set, seed: int, steps: int = VALIDATION_STEPS,
                 guidance: float = VALIDATION_GUIDANCE):
        self.model, self.vae, self.seed, self.steps = model, vae, seed, steps
        sample = _validation_sample(training_set.source)
        subjects = SubjectSet()
        for image, caption in zip(sample.cond_images, sample.cond_captions):
            pixels = to_image(image)
            subjects = subjects.add(Subject(vae.encode(pixels).float().cpu(), caption,
                                            encode_caption(clip, caption), preview=pixels))
        self.subjects = subjects
        cond, pooled = clip.encode_from_tokens(clip.tokenize(sample.prompt), return_pooled=True)
        self.positive = [[cond, {"pooled_output": pooled, "guidance": guidance}]]
        w, h = sample.target.size
        self.latent = torch.zeros(1, 16, max(2, h // 8), max(2, w // 8))

    @torch.no_grad()
    def __call__(self, lora, step: int) -> torch.Tensor:
        m = apply_dual_lora(self.model, lora, 1.0, 1.0)
        if len(self.subjects):
            m, _ = patcher.apply_routing(m, self.subjects, RoutingSettings(dynamic_routing=False))
        noise = torch.randn(self.latent.shape, generator=torch.Generator().manual_seed(self.seed))
        try:  # a Cancel can interrupt sampling: the plain model is put back either way
            out = comfy.sample.sample(m, noise, self.steps, 1.0, "euler", "simple", self.positive,
                                      self.positive, self.latent, seed=self.seed, disable_pbar=True)
            image = self.vae.decode(out).float().cpu()
        finally:
            load_plain(self.model)
        logger.info("validation image at step %d", step)
        return image.reshape(-1, *image.shape[-3:])[:1]


def _validation_sample(source):
    """The first sample (by index) that has a prompt and every condition (dropout can remove)."""
    first = None
    for index in range(64):
        sample = source.sample(index)
        first = first or sample
        if sample.prompt and len(sample.cond_images) >= 2:
            return sample
    return first


class Progress:
    """ProgressBar + websocket events; turns ComfyUI's interrupt into a trainer stop request."""

    def __init__(self, node_id: str | None, total: int):
        self.node_id, self.total, self.interrupted = node_id, total, False
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)

    def send(self, event: str, data: dict) -> None:
        try:
            from server import PromptServer
        except ImportError:  # ComfyUI used as a library without its server module
            return
        server = getattr(PromptServer, "instance", None)
        if server is not None and self.node_id is not None:
            server.send_sync(event, {"node": str(self.node_id), **data}, server.client_id)

    def on_step(self, info) -> None:
        self.send("musar.train.progress", {"step": info.step, "total": info.total,
                                           "loss": info.loss if math.isfinite(info.loss) else None,
                                           "lr": info.lr, "elapsed": round(info.elapsed, 3)})
        try:
            self.bar.update_absolute(info.step, info.total)
        except mm.InterruptProcessingException:
            self.interrupted = True

    def should_stop(self) -> bool:
        return self.interrupted or mm.processing_interrupted()


def run_training(model, clip, vae, training_set, config, store, *, cache_dir, resume=None,
                 node_id=None, validate=True, dist=None, base_model=""):
    """Train; returns (TrainResult, loss curve IMAGE, validation IMAGE). Raises ComfyUI's
    InterruptProcessingException after a cancel - ComfyUI raises it inside any op's forward, the
    trainer catches it there (Callbacks.interrupts) and checkpoints the last finished step."""
    check_model(model)
    device = mm.get_torch_device()
    dtype = model.model.manual_cast_dtype or model.model.get_dtype()
    with torch.inference_mode(False), torch.enable_grad():
        load_plain(model)
        dm = model.model.diffusion_model
        trainer = Trainer(dm, training_set, make_encoders(model, clip, vae), config,
                          cache_dir=cache_dir, store=store, device=device, dtype=dtype, dist=dist,
                          base_model=base_model or type(model.model.model_config).__name__)
        progress = Progress(node_id, config.steps)
        validator = Validator(model, clip, vae, training_set, config.seed) \
            if validate and config.validation_every else None
        callbacks = Callbacks(should_stop=progress.should_stop, on_step=progress.on_step,
                              validate=validator, before_training=lambda: load_plain(model),
                              interrupts=(mm.InterruptProcessingException,))
        result = trainer.run(callbacks, resume=resume)
    checkpoint = str(result.checkpoint) if result.checkpoint else None
    progress.send("musar.train.done", {"step": result.step, "checkpoint": checkpoint})
    if result.stopped:
        mm.throw_exception_if_processing_interrupted()  # clears ComfyUI's flag and raises
        raise mm.InterruptProcessingException()
    curve = to_image(render_loss_curve(result.history))
    preview = result.preview if result.preview is not None else to_image(
        placeholder_image("no validation (validation_every 0)"))
    return result, curve, preview
