"""Deterministic toy text encoder (the T5 / CLIP stand-in of the toy world).

- Tokenizer: lower-cased words and punctuation (regex ``[a-z0-9]+|[^\\sa-z0-9]``) over a fixed
  vocabulary: ``<pad>``, ``<unk>``, every word of the world's captions and prompts, plus
  ``extra_words``. Unknown words map to ``<unk>``; more than ``max_length`` tokens is an error.
- Token features (n, dim): a unit-norm random embedding per word, plus a sinusoidal position term
  of norm ``position_scale`` (0.5), plus a *context* term: the previous word's embedding turned by
  a fixed random rotation, times ``context_scale`` (0.5) [chosen]. FLUX gives text tokens no
  position of their own (their RoPE ids are zero), and T5's features are contextual; without the
  context term "a red and blue block" offers the image tokens two colour keys told apart only by
  a small position term, and the toy base model learnt which colours were named but not which
  came first (gate: colours right 0.10 after 8,000 steps). With it, "red" after "a" and "blue"
  after "and" are different keys. Each word stays recoverable by nearest embedding; a word's
  embedding depends only on (seed, word), so adding vocabulary never changes existing words.
- Pooled (pooled_dim): a fixed random projection of the mean word embedding (order-free, like a
  CLIP pooled vector).
"""

import hashlib
import re

import numpy as np
import torch

from .errors import ToyWorldError
from .world import vocabulary

SPECIALS = ("<pad>", "<unk>")
_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def _word_seed(seed: int, word: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{word}".encode()).digest()[:8], "little") >> 1


def _vocab_hash(vocab) -> torch.Tensor:
    digest = hashlib.sha256("\n".join(vocab).encode()).digest()[:8]
    return torch.tensor(int.from_bytes(digest, "little") >> 1, dtype=torch.int64)


def sinusoidal(n: int, dim: int) -> torch.Tensor:
    """(n, dim) sinusoidal position table (Transformer style), each row scaled to unit norm."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.exp(-np.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(n, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return (table / table.norm(dim=1, keepdim=True)).float()


def contextual(words: torch.Tensor, positions: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Token features of word embeddings (n, dim): word + position + context @ previous word."""
    previous = torch.cat([words.new_zeros(1, words.shape[1]), words[:-1]]) if len(words) else words
    return words + positions[: len(words)] + previous @ context.T


class ToyTextEncoder:
    """``encode(text) -> (tokens (n, dim), pooled (pooled_dim,))``; same text -> identical tensors."""

    def __init__(self, dim: int = 64, pooled_dim: int = 32, max_length: int = 64, seed: int = 0,
                 extra_words=(), position_scale: float = 0.5, context_scale: float = 0.5):
        if dim < 4 or dim % 2 or pooled_dim < 1 or max_length < 1:
            raise ToyWorldError(f"expected an even dim >= 4, pooled_dim >= 1 and max_length >= 1, "
                             f"got dim={dim}, pooled_dim={pooled_dim}, max_length={max_length}")
        self.vocab = tuple(dict.fromkeys((*SPECIALS, *vocabulary(), *(w.lower() for w in extra_words))))
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.dim, self.pooled_dim, self.max_length, self.seed = dim, pooled_dim, max_length, seed
        rows = [torch.zeros(dim)]
        for word in self.vocab[1:]:
            v = torch.randn(dim, generator=torch.Generator().manual_seed(_word_seed(seed, word)))
            rows.append(v / v.norm())
        self.embeddings = torch.stack(rows)  # (V, dim); <pad> is zero
        gen = torch.Generator().manual_seed(_word_seed(seed, "<pooled-projection>"))
        self.pooled_proj = torch.randn(pooled_dim, dim, generator=gen) / dim ** 0.5
        self.positions = sinusoidal(max_length, dim) * position_scale
        self.position_scale = position_scale
        gen = torch.Generator().manual_seed(_word_seed(seed, "<context-rotation>"))
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
        self.context = (q * torch.sign(torch.diagonal(r))).float() * context_scale

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    def tokenize(self, text: str) -> list:
        """Token ids of ``text`` (no padding). Raises ToyWorldError beyond ``max_length`` tokens."""
        words = _TOKEN.findall(str(text).lower())
        if len(words) > self.max_length:
            raise ToyWorldError(f"prompt has {len(words)} tokens but the toy text encoder takes at most "
                             f"{self.max_length}: shorten it or build the encoder with a larger max_length")
        return [self.index.get(w, self.unk_id) for w in words]

    def encode(self, text: str, pad: bool = False):
        """tokens (n, dim) float32 (n = token count, or max_length with ``pad``; pads are zero) and
        pooled (pooled_dim,) float32."""
        ids = torch.tensor(self.tokenize(text), dtype=torch.int64)
        words = self.embeddings[ids]
        tokens = contextual(words, self.positions, self.context)
        mean = words.mean(0) if len(ids) else torch.zeros(self.dim)
        pooled = self.pooled_proj @ mean
        if pad:
            tokens = torch.cat([tokens, torch.zeros(self.max_length - len(ids), self.dim)])
        return tokens, pooled

    def encode_batch(self, texts):
        """tokens (B, max_length, dim), mask (B, max_length) bool (True = real token), pooled (B, pooled_dim)."""
        out = [self.encode(t, pad=True) for t in texts]
        lengths = [len(self.tokenize(t)) for t in texts]
        mask = torch.arange(self.max_length)[None, :] < torch.tensor(lengths)[:, None]
        return torch.stack([o[0] for o in out]), mask, torch.stack([o[1] for o in out])

    def decode(self, tokens: torch.Tensor) -> list:
        """Words recovered from token features (n, dim): position term removed, nearest embedding."""
        words = tokens - self.positions[: tokens.shape[0]]
        sims = words @ self.embeddings[1:].T
        return [self.vocab[int(i) + 1] for i in sims.argmax(1)]

    def state_dict(self) -> dict:
        """Plain tensors (safetensors-ready)."""
        return {"embeddings": self.embeddings.clone(), "pooled_proj": self.pooled_proj.clone(),
                "positions": self.positions.clone(), "context": self.context.clone(),
                "vocab_hash": _vocab_hash(self.vocab),
                "seed": torch.tensor(self.seed, dtype=torch.int64)}

    @classmethod
    def from_state_dict(cls, state: dict, extra_words=()) -> "ToyTextEncoder":
        """Rebuild from ``state_dict()``; the vocabulary (world words + ``extra_words``) must match."""
        missing = {"embeddings", "pooled_proj", "positions", "context", "vocab_hash", "seed"} - set(state)
        if missing:
            raise ToyWorldError(f"toy text encoder state is missing {sorted(missing)}")
        n, dim = state["positions"].shape
        scale = float(state["positions"][0].norm())
        enc = cls(dim, state["pooled_proj"].shape[0], n, int(state["seed"]), extra_words, scale)
        if int(_vocab_hash(enc.vocab)) != int(state["vocab_hash"]):
            raise ToyWorldError("toy text encoder state was saved with a different vocabulary: pass the same "
                             "extra_words it was built with")
        enc.embeddings, enc.pooled_proj, enc.positions, enc.context = (
            state[k].float().clone() for k in ("embeddings", "pooled_proj", "positions", "context"))
        return enc
