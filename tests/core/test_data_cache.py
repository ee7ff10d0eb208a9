"""Content-keyed encoding cache: hits skip the encoder, keys follow content and namespace."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from musar.data import EncodingCache
from musar.errors import DatasetError

ROOT = Path(__file__).resolve().parents[2]


class CountingEncoders:
    """Stand-in encoders that compute real functions of their input and count calls."""

    def __init__(self, scale=1.0):
        self.scale, self.image_calls, self.text_calls = scale, 0, 0

    def image(self, pixels):
        assert pixels.shape[:2] == (1, 3) and pixels.dtype == torch.float32
        assert 0.0 <= pixels.min() and pixels.max() <= 1.0
        self.image_calls += 1
        pooled = torch.nn.functional.avg_pool2d(pixels, 2) * self.scale
        return pooled.to(torch.bfloat16)

    def text(self, caption):
        self.text_calls += 1
        codes = torch.tensor([ord(c) for c in caption], dtype=torch.float32) * self.scale
        return codes.reshape(1, -1, 1), codes.sum().reshape(1)


def picture(seed, h=8, w=8):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


def make(tmp_path, encoders, namespace="vae-abc"):
    return EncodingCache(tmp_path / "cache", namespace, encode_image=encoders.image,
                         encode_text=encoders.text)


def test_second_lookup_loads_identical_tensors_without_encoding(tmp_path):
    enc = CountingEncoders()
    first = make(tmp_path, enc).image(picture(0))
    assert enc.image_calls == 1
    expected = torch.nn.functional.avg_pool2d(
        torch.from_numpy(np.asarray(picture(0), np.float32) / 255).permute(2, 0, 1)[None], 2)
    torch.testing.assert_close(first.float(), expected, atol=1e-2, rtol=0)
    cache = make(tmp_path, enc)  # a fresh instance reads the files on disk
    again = cache.image(picture(0))  # equal pixels, different PIL object
    assert enc.image_calls == 1 and cache.stats() == {"hits": 1, "misses": 0, "rewrites": 0}
    assert again.dtype == torch.bfloat16 and torch.equal(again, first)


def test_text_tuples_round_trip(tmp_path):
    enc = CountingEncoders()
    cache = make(tmp_path, enc)
    first = cache.text("a red cat")
    again = cache.text("a red cat")
    assert enc.text_calls == 1 and (cache.hits, cache.misses) == (1, 1)
    assert isinstance(again, tuple) and len(again) == 2
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    cache.text("a red dog")
    assert enc.text_calls == 2


def test_changed_pixels_or_size_are_new_keys(tmp_path):
    enc = CountingEncoders()
    cache = make(tmp_path, enc)
    base = picture(1, 4, 4)
    cache.image(base)
    changed = base.copy()
    changed.putpixel((0, 0), tuple((v + 1) % 256 for v in changed.getpixel((0, 0))))
    cache.image(changed)
    reshaped = Image.frombytes("RGB", (8, 2), base.tobytes())  # same bytes, other size
    cache.image(reshaped)
    assert enc.image_calls == 3 and cache.misses == 3 and cache.hits == 0


def test_another_namespace_misses(tmp_path):
    enc, other = CountingEncoders(), CountingEncoders(scale=2.0)
    make(tmp_path, enc, "vae-abc").image(picture(2))
    value = make(tmp_path, other, "vae-xyz").image(picture(2))
    assert other.image_calls == 1
    reference = make(tmp_path, enc, "vae-abc").image(picture(2))
    assert enc.image_calls == 1 and not torch.equal(value, reference)


def test_entries_are_safetensors_written_atomically(tmp_path):
    enc = CountingEncoders()
    cache = make(tmp_path, enc)
    cache.image(picture(3))
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    entries = [p for p in files if p.suffix == ".safetensors"]
    assert len(entries) == 1 and not [p for p in files if p.suffix == ".tmp"]
    with safe_open(str(entries[0]), framework="pt") as handle:
        assert handle.metadata() == {"kind": "image", "namespace": "vae-abc"}
    assert (cache.folder / "namespace.txt").read_text().strip() == "vae-abc"


def test_an_unreadable_entry_is_encoded_again(tmp_path):
    enc = CountingEncoders()
    cache = make(tmp_path, enc)
    first = cache.image(picture(4))
    entry = next((tmp_path / "cache").rglob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:20])
    again = cache.image(picture(4))
    assert enc.image_calls == 2 and cache.rewrites == 1 and torch.equal(first, again)
    assert torch.equal(make(tmp_path, enc).image(picture(4)), first) and enc.image_calls == 2


def test_bad_encoder_output_and_namespace_raise(tmp_path):
    cache = EncodingCache(tmp_path, "ns", encode_image=lambda x: x.numpy(), encode_text=None)
    with pytest.raises(DatasetError, match="tensor"):
        cache.image(picture(5))
    with pytest.raises(DatasetError, match="encode_text"):
        cache.text("x")
    with pytest.raises(DatasetError, match="namespace"):
        EncodingCache(tmp_path, " ")


def test_data_layer_never_unpickles():
    offenders = []
    for path in sorted((ROOT / "musar" / "data").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in getattr(node, "names", [])] + [getattr(node, "module", None)]
            if isinstance(node, (ast.Import, ast.ImportFrom)) and {"pickle", "dill"} & set(names):
                offenders.append(f"{path.name}: imports pickle")
            if isinstance(node, ast.Attribute) and node.attr == "load" and \
                    isinstance(node.value, ast.Name) and node.value.id == "torch":
                offenders.append(f"{path.name}:{node.lineno} torch.load")
    assert not offenders
