"""From multi-subject samples (PIL images + text) to the tensors of one training forward.

The encoders come from the ComfyUI side as plain callables (``Encoders``); every call goes
through ``EncodingCache``, so content is encoded once per encoder - later steps, epochs and runs
read the stored tensors. ``EncodedSample`` holds one sample packed into FLUX tokens.

Batching strategy [chosen]: samples whose token layout is identical (same prompt length, target
grid, caption lengths and reference grids) are forwarded together; the others run as separate
micro-batches. The loss of every sample carries the same weight (1 / samples per step), so the
gradient is the mean over the step's samples whatever the grouping. With the diptych builder the
subject captions (item names) differ in length, so in practice most forwards hold one sample and
``batch_size`` acts like gradient accumulation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import torch

from ..data import EncodingCache
from ..data.records import MultiSubjectSample
from ..errors import DatasetError, TrainingError
from ..layout import TokenLayout, grid_ids, pack_latent, subject_ids


@dataclasses.dataclass(frozen=True)
class Encoders:
    """What the ComfyUI side provides. ``image``: (1, 3, H, W) in 0..1 -> (1, C, h, w) latent in
    the model's latent space; ``prompt``: text -> ((1, P, D) features, (1, V) pooled);
    ``caption``: subject caption -> (1, n, D) features with padding removed. ``namespace`` names
    the encoders (e.g. weight fingerprints) so another model never reads these cache entries."""

    image: Callable[[torch.Tensor], torch.Tensor]
    prompt: Callable[[str], tuple[torch.Tensor, torch.Tensor]]
    caption: Callable[[str], torch.Tensor]
    namespace: str


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingSet:
    """What MUSAR_LoadDiptychDataset hands the trainer: a sample source (DiptychBuilder or
    MultiSubjectSource) and a description of how it was made (for resume checks)."""

    source: object
    description: Mapping[str, object]
    summary: str = ""

    def __len__(self) -> int:
        return len(self.source)

    def __deepcopy__(self, memo):
        return self


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedSample:
    x0: torch.Tensor  # (1, x_len, C*4) packed target latent
    grid: tuple[int, int]
    context: torch.Tensor  # (1, P, D)
    pooled: torch.Tensor  # (1, V)
    captions: tuple[torch.Tensor, ...]  # (1, n_i, D)
    subjects: torch.Tensor  # (1, sum n_Ic, C*4)
    subject_grids: tuple[tuple[int, int], ...]

    @property
    def signature(self) -> tuple:
        return (self.context.shape[1], self.grid, tuple(c.shape[1] for c in self.captions),
                self.subject_grids, self.x0.shape[-1])

    def layout(self) -> TokenLayout:
        return TokenLayout(self.context.shape[1], self.x0.shape[1],
                           tuple(c.shape[1] for c in self.captions),
                           tuple(h * w for h, w in self.subject_grids))


def _normal(t: torch.Tensor) -> torch.Tensor:
    """A tensor usable by autograd (tensors made under inference mode are not)."""
    return t.clone() if t.is_inference() else t


class SampleEncoder:
    """Encodes samples through three content-keyed caches (images, prompts, captions)."""

    def __init__(self, encoders: Encoders, cache_dir):
        ns = encoders.namespace
        self.images = EncodingCache(cache_dir, ns + "/image", encode_image=encoders.image)
        self.prompts = EncodingCache(cache_dir, ns + "/prompt", encode_text=encoders.prompt)
        self.captions = EncodingCache(cache_dir, ns + "/caption", encode_text=encoders.caption)

    def stats(self) -> dict:
        return {k: c.stats() for k, c in (("images", self.images), ("prompts", self.prompts),
                                          ("captions", self.captions))}

    def _image(self, image) -> tuple[torch.Tensor, tuple[int, int]]:
        latent = _normal(self.images.image(image))
        if latent.ndim != 4 or latent.shape[0] != 1:
            raise TrainingError(f"the image encoder should return a (1, C, h, w) latent, got "
                                f"shape {tuple(latent.shape)}")
        return pack_latent(latent.float())

    def encode(self, sample: MultiSubjectSample) -> EncodedSample:
        if not isinstance(sample, MultiSubjectSample):
            raise DatasetError(f"expected a MultiSubjectSample, got {type(sample).__name__}")
        x0, grid = self._image(sample.target)
        prompt = self.prompts.text(sample.prompt)
        if not isinstance(prompt, tuple) or len(prompt) != 2:
            raise TrainingError("the prompt encoder should return (features, pooled)")
        context, pooled = (_normal(t).float() for t in prompt)
        refs = [self._image(c) for c in sample.cond_images]
        captions = tuple(_normal(self.captions.text(c)).float() for c in sample.cond_captions)
        channels = x0.shape[-1]
        subjects = torch.cat([torch.zeros(1, 0, channels)] + [t for t, _ in refs], 1)
        return EncodedSample(x0, grid, context, pooled.reshape(1, -1), captions, subjects,
                             tuple(g for _, g in refs))


@dataclasses.dataclass(frozen=True)
class Batch:
    """Samples of one layout stacked for one forward."""

    layout: TokenLayout
    x0: torch.Tensor  # (B, x_len, C*4)
    x_ids: torch.Tensor  # (B, x_len, 3)
    context: torch.Tensor
    pooled: torch.Tensor
    captions: list[torch.Tensor]
    subjects: torch.Tensor
    subject_ids: torch.Tensor  # (sum n_Ic, 3)
    positions: tuple[int, ...]  # where the samples sit in the step's global batch


def group_by_layout(samples: Sequence[EncodedSample], limit: int) -> list[list[int]]:
    """Indices into ``samples`` grouped by identical layout, at most ``limit`` per group, in
    first-appearance order (deterministic)."""
    groups: dict[tuple, list[list[int]]] = {}
    for i, s in enumerate(samples):
        chunks = groups.setdefault(s.signature, [[]])
        if len(chunks[-1]) == limit:
            chunks.append([])
        chunks[-1].append(i)
    return [chunk for chunks in groups.values() for chunk in chunks]


def collate(samples: Sequence[EncodedSample], positions: Sequence[int], position_mode: str,
            device) -> Batch:
    first = samples[0]
    ids = grid_ids(*first.grid)
    refs = subject_ids(list(first.subject_grids), position_mode)
    ref_ids = torch.cat([torch.zeros(0, 3)] + refs)

    def stack(get):
        return torch.cat([get(s) for s in samples]).to(device)

    return Batch(first.layout(), stack(lambda s: s.x0), ids.expand(len(samples), -1, -1).to(device),
                 stack(lambda s: s.context), stack(lambda s: s.pooled),
                 [stack(lambda s, i=i: s.captions[i]) for i in range(len(first.captions))],
                 stack(lambda s: s.subjects), ref_ids.to(device), tuple(positions))
