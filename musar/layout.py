"""Token layout of one MUSAR forward pass, and the position ids of subject tokens.

FLUX's joint attention runs over ``[txt stream | img stream]``. MUSAR appends, per subject i,
its caption tokens Tc_i to the text stream and its reference image tokens Ic_i to the image
stream; ComfyUI itself appends the ``ReferenceLatent`` references (FLUX.1 Kontext, FLUX.2) after
the canvas. The joint sequence is::

    [ P | Tc_1 ... Tc_N | X | E | R_1 ... R_M | Ic_1 ... Ic_N ]

P = main prompt, X = noisy canvas, E = references that are not routed (treated exactly like X),
R_j = routed reference j (MUSAR Route References), Ic_i = subject i's image tokens. A layout has
either E or R_1..R_M, never both (the references of one conditioning are routed or not).

Routed entities ("conditions"), in route index order: the N MUSAR subjects (condition C_i =
Tc_i + Ic_i), then the M routed references (condition = R_j). All offsets below index the joint
sequence; ``*_stream`` helpers index one stream.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property

import torch

from .errors import LayoutError

NONE, NOISY, SUBJECT = 0, 1, 2  # token classes for the dual-branch LoRA
MAX_SUBJECTS = 16
MAX_REFERENCES = 16


def check_subject_count(n: int) -> None:
    """The one rule on how many subjects fit (one routing, one layout)."""
    if n > MAX_SUBJECTS:
        raise LayoutError(f"at most {MAX_SUBJECTS} subjects fit one MUSAR Apply Routing; this "
                          f"would be subject {n}: remove some MUSAR Subject nodes")


def check_reference_count(n: int) -> None:
    """The one rule on how many routed references fit one layout."""
    if n > MAX_REFERENCES:
        raise LayoutError(f"at most {MAX_REFERENCES} references can be routed; the conditioning "
                          f"holds {n}: remove some ReferenceLatent nodes")


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    prompt_len: int
    x_len: int
    caption_lens: tuple[int, ...] = ()
    image_lens: tuple[int, ...] = ()
    extra_len: int = 0  # E: references after X that are not routed (behave as canvas)
    reference_lens: tuple[int, ...] = ()  # R_1..R_M: routed references
    clean_references: bool = False  # R_j modulated as condition tokens (isolated, FLUX.1)

    def __post_init__(self):
        if len(self.caption_lens) != len(self.image_lens):
            raise LayoutError(f"{len(self.caption_lens)} captions but {len(self.image_lens)} "
                              "reference images: every subject needs exactly one of each")
        check_subject_count(len(self.image_lens))
        check_reference_count(len(self.reference_lens))
        if min((self.prompt_len, self.x_len, self.extra_len, *self.caption_lens,
                *self.image_lens, *self.reference_lens), default=0) < 0 or self.x_len == 0:
            raise LayoutError(f"segment lengths must be >= 0 and the canvas non-empty: {self}")
        if any(n == 0 for n in self.image_lens):
            raise LayoutError("a subject has no image tokens left (is its mask empty?)")
        if any(n == 0 for n in self.reference_lens):
            raise LayoutError("a routed reference has no tokens")
        if self.extra_len and self.reference_lens:
            raise LayoutError("references are either routed or not: a layout cannot hold both")

    @property
    def n_subjects(self) -> int:
        """MUSAR subjects (caption + image tokens)."""
        return len(self.image_lens)

    @property
    def n_references(self) -> int:
        """Routed references (ReferenceLatent tokens, each its own segment)."""
        return len(self.reference_lens)

    @property
    def n_routed(self) -> int:
        """Routed entities: subjects first, then references (the route's index space)."""
        return self.n_subjects + self.n_references

    @property
    def txt_len(self) -> int:
        return self.prompt_len + sum(self.caption_lens)

    @property
    def canvas_len(self) -> int:
        return self.x_len + self.extra_len

    @property
    def img_len(self) -> int:
        return self.canvas_len + sum(self.reference_lens) + sum(self.image_lens)

    @property
    def total(self) -> int:
        return self.txt_len + self.img_len

    # ---- joint-sequence segments -------------------------------------------------------------
    @property
    def prompt(self) -> slice:
        return slice(0, self.prompt_len)

    @cached_property
    def _caption_starts(self) -> tuple[int, ...]:
        return _starts(self.prompt_len, self.caption_lens)

    @cached_property
    def _reference_starts(self) -> tuple[int, ...]:
        return _starts(self.txt_len + self.canvas_len, self.reference_lens)

    @cached_property
    def _image_starts(self) -> tuple[int, ...]:
        return _starts(self.txt_len + self.canvas_len + sum(self.reference_lens), self.image_lens)

    def caption(self, i: int) -> slice:
        return slice(self._caption_starts[i], self._caption_starts[i] + self.caption_lens[i])

    def image(self, i: int) -> slice:
        return slice(self._image_starts[i], self._image_starts[i] + self.image_lens[i])

    def reference(self, j: int) -> slice:
        return slice(self._reference_starts[j], self._reference_starts[j] + self.reference_lens[j])

    @property
    def canvas(self) -> slice:
        """X and E (unrouted references) together: the tokens that behave as the generated image."""
        return slice(self.txt_len, self.txt_len + self.canvas_len)

    @property
    def x(self) -> slice:
        return slice(self.txt_len, self.txt_len + self.x_len)

    @property
    def extra(self) -> slice:
        return slice(self.txt_len + self.x_len, self.txt_len + self.canvas_len)

    def condition(self, i: int) -> tuple[slice, ...]:
        """Segments of routed entity i: (caption, image) of a subject, (tokens,) of a reference."""
        n = self.n_subjects
        return (self.caption(i), self.image(i)) if i < n else (self.reference(i - n),)

    def route_keys(self, i: int) -> slice:
        """The keys whose attention mass scores routed entity i (its image tokens)."""
        n = self.n_subjects
        return self.image(i) if i < n else self.reference(i - n)

    def is_reference(self, i: int) -> bool:
        return i >= self.n_subjects

    # ---- per-stream helpers --------------------------------------------------------------------
    def image_in_img_stream(self, i: int) -> slice:
        s = self.image(i)
        return slice(s.start - self.txt_len, s.stop - self.txt_len)

    def modulation_dims(self, stream: str) -> list[tuple[int, int, int]]:
        """(start, end, row) ranges for ComfyUI's per-segment modulation: row 0 is the sampling
        timestep, row 1 the clean-condition vector (timestep 0, guidance 1). Routed references
        take the sampling modulation, as stock, unless ``clean_references``."""
        P, T = self.prompt_len, self.txt_len
        C = self.canvas_len + (0 if self.clean_references else sum(self.reference_lens))
        txt = [(0, P, 0), (P, T, 1)]
        img = [(0, C, 0), (C, self.img_len, 1)]
        table = {"txt": txt, "img": img, "joint": txt + [(T + a, T + b, r) for a, b, r in img]}
        return [d for d in table[stream] if d[1] > d[0]]

    def token_classes(self, stream: str) -> torch.Tensor:
        """LoRA branch per token: NONE (prompt and captions), NOISY (canvas and ReferenceLatent
        references, routed or not, as before routing existed), SUBJECT (Ic)."""
        img = [NOISY] * (self.canvas_len + sum(self.reference_lens)) + [SUBJECT] * sum(self.image_lens)
        if stream == "img":
            return torch.tensor(img, dtype=torch.int8)
        if stream == "joint":
            return torch.tensor([NONE] * self.txt_len + img, dtype=torch.int8)
        raise LayoutError(f"unknown stream {stream!r}: expected 'img' or 'joint'")

    def without_conditions(self) -> TokenLayout:
        """The layout without MUSAR subjects (references are ComfyUI's and stay)."""
        return TokenLayout(self.prompt_len, self.x_len, extra_len=self.extra_len,
                           reference_lens=self.reference_lens)


def _starts(offset: int, lengths: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for n in lengths:
        out.append(offset)
        offset += n
    return tuple(out)


# ---- position ids ------------------------------------------------------------------------------
POSITION_MODES = ("shared", "distinct", "kontext")


def grid_ids(rows: int, cols: int, index: float = 0.0, row0: float = 0.0, col0: float = 0.0
             ) -> torch.Tensor:
    """(rows*cols, 3) float32 ids (index, row, col) in FLUX's row-major token order."""
    r = torch.arange(rows, dtype=torch.float32).add_(row0)
    c = torch.arange(cols, dtype=torch.float32).add_(col0)
    ids = torch.empty(rows, cols, 3, dtype=torch.float32)
    ids[..., 0] = index
    ids[..., 1] = r[:, None]
    ids[..., 2] = c[None, :]
    return ids.reshape(rows * cols, 3)


def subject_ids(grids: list[tuple[int, int]], mode: str = "shared") -> list[torch.Tensor]:
    """Position ids for each subject's reference token grid (rows, cols).

    ``shared``   [chosen default, OminiControl's subject convention]: every reference sits just
                 left of the canvas, columns -w..-1 of its own width; subjects overlap in position
                 (they never attend to each other, so this is unambiguous).
    ``distinct`` references tiled leftwards without overlap (subject i at -(w_1+..+w_i)).
    ``kontext``  FLUX Kontext's convention (index 1, references tiled as ComfyUI's "offset"
                 method does), for Kontext models.
    """
    if mode == "shared":
        return [grid_ids(h, w, col0=-w) for h, w in grids]
    if mode == "distinct":
        out, left = [], 0
        for h, w in grids:
            left += w
            out.append(grid_ids(h, w, col0=-left))
        return out
    if mode == "kontext":
        out, hh, ww = [], 0, 0
        for h, w in grids:
            row0, col0 = (0, ww) if h + hh > w + ww else (hh, 0)
            hh, ww = max(hh, h + row0), max(ww, w + col0)
            out.append(grid_ids(h, w, index=1.0, row0=row0, col0=col0))
        return out
    raise LayoutError(f"unknown position mode {mode!r}: expected one of {', '.join(POSITION_MODES)}")


def pack_latent(latent: torch.Tensor, patch: int = 2) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, C, H, W) latent -> (B, (H/p)*(W/p), C*p*p) tokens in FLUX's channel order, + grid."""
    b, c, h, w = latent.shape
    if h % patch or w % patch:
        pad = (0, (-w) % patch, 0, (-h) % patch)
        latent = torch.nn.functional.pad(latent, pad, mode="circular")
        b, c, h, w = latent.shape
    t = latent.reshape(b, c, h // patch, patch, w // patch, patch)
    t = t.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)
    return t, (h // patch, w // patch)


def mask_to_tokens(mask: torch.Tensor, grid: tuple[int, int], min_coverage: float = 0.5
                   ) -> torch.Tensor:
    """Boolean keep-vector over a reference's tokens: a token is kept when at least
    ``min_coverage`` of its area is inside the (H, W) mask (any resolution)."""
    if mask.ndim != 2:
        raise LayoutError(f"a subject mask must be one (H, W) mask, got shape {tuple(mask.shape)}")
    m = mask.float()[None, None]
    pooled = torch.nn.functional.adaptive_avg_pool2d(m, grid)[0, 0]
    return (pooled >= min_coverage).reshape(-1)
