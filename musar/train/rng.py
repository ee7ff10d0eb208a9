"""Seeded randomness of a training run, with states that round-trip through a checkpoint.

Two generators, never the global ones:

* ``SampleOrder`` (random.Random): which samples a step uses. Epoch after epoch it walks a
  fresh seeded permutation of the source; sample index = epoch * len + permuted row, so a
  diptych source (whose samples depend on the index) draws new subject pairs every epoch while a
  ready-sample source wraps around to the same rows.
* the noise generator (torch.Generator): one 63-bit seed per sample of the global batch; the
  sample's timestep and noise come from a generator seeded with it. Every process of a
  data-parallel run draws the same seeds and uses its own, so a sample gets the same t and noise
  however the batch is split over processes.

States are stored as uint8 tensors (safetensors), never pickled.
"""

from __future__ import annotations

import json
import random

import torch


def json_to_uint8(value) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8).clone()


def uint8_to_json(tensor: torch.Tensor):
    return json.loads(bytes(tensor.to(torch.uint8).cpu().tolist()).decode())


class SampleOrder:
    """Endless seeded sample indices over a source of ``length`` samples."""

    def __init__(self, length: int, seed: int):
        self.length = int(length)
        self._rng = random.Random(f"musar/order/{int(seed)}")
        self.epoch, self.pos = 0, 0
        self._perm = self._shuffled()

    def _shuffled(self) -> list[int]:
        perm = list(range(self.length))
        self._rng.shuffle(perm)
        return perm

    def next(self) -> int:
        if self.pos == self.length:
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._shuffled()
        index = self.epoch * self.length + self._perm[self.pos]
        self.pos += 1
        return index

    def take(self, count: int) -> list[int]:
        return [self.next() for _ in range(count)]

    def state(self) -> torch.Tensor:
        version, internal, gauss = self._rng.getstate()
        return json_to_uint8({"length": self.length, "epoch": self.epoch, "pos": self.pos,
                              "perm": self._perm, "rng": [version, list(internal), gauss]})

    def restore(self, tensor: torch.Tensor) -> None:
        data = uint8_to_json(tensor)
        if data["length"] != self.length:
            raise ValueError(f"sample order of {data['length']} samples, source has {self.length}")
        version, internal, gauss = data["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self.epoch, self.pos, self._perm = data["epoch"], data["pos"], list(data["perm"])

    def snapshot(self) -> tuple:
        """A cheap in-memory copy of the state (``rewind`` returns to it)."""
        return self._rng.getstate(), self.epoch, self.pos, self._perm  # _perm is never mutated

    def rewind(self, snapshot: tuple) -> None:
        state, self.epoch, self.pos, self._perm = snapshot
        self._rng.setstate(state)

    def copy(self) -> SampleOrder:
        twin = SampleOrder(self.length, 0)
        twin.restore(self.state())
        return twin


def noise_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) ^ 0x5EED_F10)


def sample_seeds(gen: torch.Generator, count: int) -> list[int]:
    """``count`` per-sample seeds (the same on every process)."""
    return torch.randint(0, 2**62, (count,), generator=gen, dtype=torch.int64).tolist()


def timestep_and_noise(seed: int, shape: tuple[int, ...], mean: float, std: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample's flow-matching time t = sigmoid(N(mean, std)) (shape (1,)) and noise (CPU)."""
    gen = torch.Generator().manual_seed(int(seed))
    t = torch.sigmoid(torch.randn(1, generator=gen) * std + mean)
    noise = torch.randn(shape, generator=gen)
    return t, noise
