"""``MUSAR_ToyWorldLoader``: the trained toy-world FLUX with its codec and text encoder as real
ComfyUI MODEL / CLIP / VAE objects, so stock CLIPTextEncode, VAEEncode, VAEDecode and KSampler
run on them unchanged (docs/TOY_WORLD.md).

- VAE: a ``comfy.sd.VAE`` whose first-stage model is the toy codec (``CellCodec``, exact and
  linear on the world's flat 8 px cells, 16 channels, 8x). Its raw latents are scaled like ae.safetensors' (``z / scale_factor + shift_factor`` of
  ComfyUI's Flux latent format), so the model's ``process_latent_in`` hands FLUX the codec's
  unit-variance latents, as it does for real FLUX.
- CLIP: a ``comfy.sd.CLIP`` around a tokenizer / encoder pair wrapping ``ToyTextEncoder`` in T5's
  conventions: key ``"t5xxl"``, pad id 0, end id 1 (``</s>``, appended), word ids = toy ids + 1
  (``<unk>`` -> 2); no padding, no prompt weights. Features: ``textenc.contextual`` (word
  embedding + position term + the previous word's context term); the end token has no word
  embedding of its own. Pooled = the toy encoder's pooled vector.
- MODEL: the FLUX checkpoint through ``standins.load_flux_file`` (config in its metadata).
- The multi-reference base (``toyworld.train_refbase``): a checkpoint named ``toy_flux_refs*``
  comes with its own text encoder file, ``toy_ref_text_encoder.safetensors``: the world's words
  plus ``toyworld.multiref.REF_WORDS`` ("image", "at", digits). Every other checkpoint loads
  ``toy_text_encoder.safetensors`` as before.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import comfy.latent_formats
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base
import comfy.utils
import torch
from comfy_api.latest import io

from ...musar.checks import verdict
from ...musar.errors import ModelError, MusarError
from ...musar.paths import folder_file, folder_files
from ...toyworld.codec import CellCodec
from ...toyworld.multiref import REF_WORDS
from ...toyworld.textenc import ToyTextEncoder, contextual
from . import standins

logger = logging.getLogger(__name__)
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "toyworld" / "weights"  # the pack root
# Another folder of toy files, set by whoever runs the process (the toy scripts, their smoke
# tests), never by a prompt: the loader reads only from this one folder.
WEIGHTS_ENV = "MUSAR_TOY_WEIGHTS"
MODEL_PATTERN = "toy_flux*.safetensors"
CODEC_FILE, TEXT_FILE, BASE_FILE = "toy_codec.safetensors", "toy_text_encoder.safetensors", "toy_flux.safetensors"
PAD_ID, END_ID, ID_SHIFT = 0, 1, 1
REF_MODEL_PREFIX, REF_TEXT_FILE = "toy_flux_refs", "toy_ref_text_encoder.safetensors"  # multi-reference base


# ---- VAE ---------------------------------------------------------------------------------------
class ToyFirstStage(torch.nn.Module):
    """First-stage model of the toy VAE: pixels (B, 3, H, W) in 0..1 <-> raw latents (B, 16, h, w)."""

    def __init__(self, codec: CellCodec, shift: float, scale: float):
        super().__init__()
        for name, tensor in codec.state_dict().items():
            self.register_buffer(name, tensor.clone())
        self.shift, self.scale = float(shift), float(scale)

    def _codec(self) -> CellCodec:
        return CellCodec(self.mean, self.std, self.matrix)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        z = self._codec().encode(pixels.float().movedim(1, -1))
        return z / self.scale + self.shift

    def decode(self, latents: torch.Tensor, **_) -> torch.Tensor:
        return self._codec().decode((latents.float() - self.shift) * self.scale).movedim(-1, 1)


def build_vae(codec: CellCodec) -> comfy.sd.VAE:
    """A ``comfy.sd.VAE`` with the toy codec as first stage. ComfyUI's constructor sets every
    default attribute (built on a minimal AutoencoderKL that is then replaced)."""
    params = {"ddconfig": {"double_z": True, "z_channels": 16, "resolution": 64, "in_channels": 3,
                           "out_ch": 3, "ch": 32, "ch_mult": [1], "num_res_blocks": 1,
                           "attn_resolutions": [], "dropout": 0.0}, "embed_dim": 16}
    from comfy.ldm.models.autoencoder import AutoencoderKL

    vae = comfy.sd.VAE(sd=AutoencoderKL(**params).state_dict(), config={"params": params},
                       dtype=torch.float32)
    fmt = comfy.latent_formats.Flux()
    vae.first_stage_model = ToyFirstStage(codec, fmt.shift_factor, fmt.scale_factor).eval()
    vae.patcher = comfy.model_patcher.ModelPatcher(vae.first_stage_model, load_device=vae.device,
                                                   offload_device=mm.vae_offload_device())
    vae.latent_channels, vae.downscale_ratio, vae.upscale_ratio = codec.latent_channels, codec.factor, codec.factor
    vae.process_input = lambda image: image
    vae.process_output = lambda image: image.clamp(0.0, 1.0)
    vae.working_dtypes, vae.vae_dtype = [torch.float32], torch.float32
    vae.memory_used_encode = lambda shape, dtype: 64 * shape[-2] * shape[-1] * mm.dtype_size(dtype)
    vae.memory_used_decode = lambda shape, dtype: 64 * 64 * shape[-2] * shape[-1] * mm.dtype_size(dtype)
    vae.size = None
    vae.model_size()
    return vae


# ---- CLIP --------------------------------------------------------------------------------------
class ToyTokenizer:
    """ComfyUI tokenizer interface over ``ToyTextEncoder.tokenize`` in T5 id conventions."""

    def __init__(self, encoder: ToyTextEncoder):
        self.encoder = encoder

    def tokenize_with_weights(self, text: str, return_word_ids=False, **kwargs):
        ids = [i + ID_SHIFT for i in self.encoder.tokenize(text)]
        if len(ids) + 1 > self.encoder.max_length:
            raise MusarError(f"the prompt has {len(ids)} words; the toy text encoder takes at most "
                             f"{self.encoder.max_length - 1} (plus the end token): shorten it")
        chunk = [(i, 1.0, n + 1) if return_word_ids else (i, 1.0) for n, i in enumerate(ids)]
        chunk.append((END_ID, 1.0, 0) if return_word_ids else (END_ID, 1.0))
        return {"t5xxl": [chunk]}

    def untokenize(self, token_weight_pair):
        vocab = self.encoder.vocab
        return [(p, "</s>" if p[0] == END_ID else vocab[p[0] - ID_SHIFT] if p[0] else "<pad>")
                for p in token_weight_pair]

    def state_dict(self):
        return {}


class ToyTextModel(torch.nn.Module):
    """ComfyUI text-encoder interface: token ids -> (features (1, n, dim), pooled (1, pooled_dim))."""

    def __init__(self, encoder: ToyTextEncoder, device="cpu", dtype=None, model_options=None):
        super().__init__()
        self.register_buffer("embeddings", encoder.embeddings.clone())
        self.register_buffer("positions", encoder.positions.clone())
        self.register_buffer("pooled_proj", encoder.pooled_proj.clone())
        self.register_buffer("context", encoder.context.clone())
        self.dtypes = {torch.float32}

    def set_clip_options(self, options):
        pass

    def reset_clip_options(self):
        pass

    def encode_ids(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.tensor(ids, dtype=torch.int64, device=self.embeddings.device)
        word = self.embeddings[(t - ID_SHIFT).clamp_min(0)] * (t > END_ID)[:, None]
        feats = contextual(word, self.positions, self.context) * (t != PAD_ID)[:, None]
        n_words = int((t > END_ID).sum())
        mean = word.sum(0) / max(1, n_words)
        return feats, self.pooled_proj @ mean

    def encode_token_weights(self, token_weight_pairs):
        pairs = token_weight_pairs["t5xxl"] if isinstance(token_weight_pairs, dict) else token_weight_pairs
        encoded = [self.encode_ids([p[0] for p in chunk]) for chunk in pairs]
        cond = torch.cat([e[0] for e in encoded])[None]
        return cond.float(), encoded[0][1][None].float()

    def load_sd(self, sd):
        return self.load_state_dict(sd, strict=False)


def build_clip(encoder: ToyTextEncoder) -> comfy.sd.CLIP:
    class Tokenizer(ToyTokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data=None):
            super().__init__(encoder)

    class Model(ToyTextModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            super().__init__(encoder, device, dtype, model_options)

    target = comfy.supported_models_base.ClipTarget(Tokenizer, Model)
    return comfy.sd.CLIP(target=target, model_options={"dtype": torch.float32})


# ---- files -------------------------------------------------------------------------------------
def weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_ENV) or WEIGHTS_DIR)


def _path(folder: Path, name: str) -> Path:
    path = Path(folder) / name
    if not path.is_file():
        raise ModelError(f"toy-world file '{path}' is missing: train the toy model "
                         "(python -m toyworld.train_base) or restore the committed weights")
    return path


def _load(folder: Path, name: str) -> dict:
    return comfy.utils.load_torch_file(str(_path(folder, name)), safe_load=True)


def load_codec(folder: Path) -> CellCodec:
    return CellCodec.from_state_dict(_load(folder, CODEC_FILE))


def load_text_encoder(folder: Path, name: str = TEXT_FILE) -> ToyTextEncoder:
    """The toy text encoder file ``name`` of ``folder``; the multi-reference base's file has the
    extra words ``REF_WORDS``."""
    return ToyTextEncoder.from_state_dict(_load(folder, name), REF_WORDS if name == REF_TEXT_FILE else ())


def text_file_for(model_file: str) -> str:
    """The text encoder file that goes with checkpoint ``model_file``."""
    return REF_TEXT_FILE if Path(str(model_file)).name.startswith(REF_MODEL_PREFIX) else TEXT_FILE


def load_toy_world(folder: Path, model_file: str = BASE_FILE):
    """(MODEL patcher, CLIP, VAE) of the toy world in ``folder`` (scripts pass their own folder;
    the node goes through :func:`model_path`)."""
    model, _ = standins.load_flux_file(str(_path(folder, model_file)))
    return model, build_clip(load_text_encoder(folder, text_file_for(model_file))), build_vae(load_codec(folder))


def model_files() -> list[str]:
    return folder_files(weights_dir(), [MODEL_PATTERN]) or [BASE_FILE]


def model_path(model_file) -> Path:
    """The checkpoint ``model_file`` names, confined to the toy weights folder: a plain file name
    matching ``toy_flux*.safetensors`` that resolves (symlinks and ``..`` followed) to a file
    directly inside the folder. Anything else is refused with one message, so the answer never
    tells what exists outside the folder."""
    path = folder_file(weights_dir(), model_file, [MODEL_PATTERN])
    if path is None:
        raise ModelError(f"model_file {str(model_file)[:80]!r} is not a toy FLUX checkpoint of the "
                         f"pack's toy weights folder: expected one of {', '.join(model_files())}; "
                         "pick one from the list")
    return Path(path)


class ToyWorldLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_ToyWorldLoader",
            display_name="MUSAR Toy World Loader (testing)",
            category="MUSAR/testing",
            description=(
                "The toy world's trained tiny FLUX-architecture MODEL with its text encoder (CLIP "
                "in T5 conventions) and latent codec (VAE, 16 channels, 8x), shipped with the "
                "pack for tests and the demo. It draws two-colour patterned blocks in four named "
                "slots on flat backgrounds from toy prompts, on a CPU in seconds; see "
                "docs/TOY_WORLD.md for the words it knows. Use UNETLoader / DualCLIPLoader / "
                "VAELoader for real FLUX."),
            is_experimental=True,
            inputs=[
                io.Combo.Input("model_file", options=model_files(), default=BASE_FILE,
                               tooltip="Toy FLUX checkpoint in the pack's toyworld/weights folder "
                                       "(nothing outside that folder can be loaded)."),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def validate_inputs(cls, model_file):
        return verdict(None, dict(model_file=model_file), model_file=model_path)

    @classmethod
    def execute(cls, model_file) -> io.NodeOutput:
        path = model_path(model_file)
        return io.NodeOutput(*load_toy_world(path.parent, path.name))


NODES = [ToyWorldLoader]
