"""Toy latent codec (exact and linear on the world's cells, FLUX latent geometry) and the toy text
encoder: deterministic stand-ins whose behaviour the tests pin down."""

import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from toyworld.codec import CHANNELS, CellCodec
from toyworld.errors import ToyWorldError
from toyworld.textenc import ToyTextEncoder
from toyworld.world import World, render, scene_caption


def _scenes(n: int, seed: int = 0) -> torch.Tensor:
    world, rnd = World(0), random.Random(seed)
    images = [np.asarray(render(*world.sample_scene(rnd, 1 + i % 4, "all"))) for i in range(n)]
    return torch.from_numpy(np.stack(images)).float() / 255.0


def test_codec_round_trip_is_exact_on_world_images_and_diptychs():
    codec = CellCodec.for_world(0)
    x = _scenes(16)
    z = codec.encode(x)
    assert z.shape == (16, CHANNELS, 16, 16)
    assert torch.equal((codec.decode(z) * 255).round(), (x * 255).round())  # exact after 8-bit rounding
    wide = torch.cat([x[:4], x[4:8]], dim=2)  # 128 x 256 diptychs
    assert torch.equal((codec.decode(codec.encode(wide)) * 255).round(), (wide * 255).round())


def test_codec_is_linear_and_encode_of_decode_projects_onto_the_colour_subspace():
    codec = CellCodec.for_world(0)
    x, y = _scenes(4, 1), _scenes(4, 2)
    torch.testing.assert_close(codec.encode(0.3 * x + 0.7 * y), 0.3 * codec.encode(x) + 0.7 * codec.encode(y))
    z = torch.randn(2, CHANNELS, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.2
    once = codec.encode(codec.decode(z))
    torch.testing.assert_close(codec.encode(codec.decode(once)), once)  # idempotent: a projection
    m = codec.matrix
    torch.testing.assert_close(m.T @ m, torch.eye(3), atol=1e-6, rtol=0)
    rms = float(codec.encode(x).pow(2).sum(1).mean() / 3) ** 0.5  # per colour direction, like FLUX's ~1
    assert 0.5 < rms < 2.0


def test_codec_state_round_trips_through_safetensors_and_is_deterministic(tmp_path):
    codec = CellCodec.for_world(0)
    save_file(codec.state_dict(), str(tmp_path / "c.safetensors"))
    again = CellCodec.from_state_dict(load_file(str(tmp_path / "c.safetensors")))
    x = _scenes(2)
    assert torch.equal(again.encode(x), codec.encode(x))
    assert torch.equal(CellCodec.for_world(0).matrix, codec.matrix)
    assert not torch.equal(CellCodec.for_world(1).matrix, codec.matrix)


def test_codec_refuses_wrong_shapes():
    codec = CellCodec.for_world(0)
    with pytest.raises(ToyWorldError, match="multiples of 8"):
        codec.encode(torch.zeros(1, 12, 16, 3))
    with pytest.raises(ToyWorldError, match="16"):
        codec.decode(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ToyWorldError, match="missing"):
        CellCodec.from_state_dict({"mean": torch.zeros(3)})


def test_text_encoder_is_deterministic_and_binds_words_to_positions():
    enc = ToyTextEncoder()
    world = World(0)
    text = scene_caption(world.sample_scene(random.Random(1), 3)[0], "grey", True)
    t1, p1 = enc.encode(text)
    t2, p2 = ToyTextEncoder().encode(text)
    assert torch.equal(t1, t2) and torch.equal(p1, p2)
    assert t1.shape == (len(enc.tokenize(text)), 64) and p1.shape == (32,)
    assert enc.decode(t1) == [enc.vocab[i] for i in enc.tokenize(text)]  # every word recoverable
    a, pa = enc.encode("a striped block in the top left and a plain block in the bottom right")
    b, pb = enc.encode("a plain block in the top left and a striped block in the bottom right")
    assert not torch.allclose(a, b) and torch.allclose(pa, pb)  # order lives in tokens, not in pooled
    # the context term: the same colour word is a different key after "a" than after "and"
    first, second = enc.encode("a red and red block")[0][[1, 3]]
    moved = enc.positions[1] - enc.positions[3]
    context = enc.context @ (enc.embeddings[enc.index["a"]] - enc.embeddings[enc.index["and"]])
    torch.testing.assert_close(first - second, moved + context)
    assert context.norm() > 0.5
    assert not torch.equal(ToyTextEncoder(seed=1).encode(text)[0], t1)


def test_text_encoder_padding_unknown_words_and_length_limit():
    enc = ToyTextEncoder(dim=32, pooled_dim=8, max_length=8)
    tokens, mask, pooled = enc.encode_batch(["a red block", "a zebra"])
    assert tokens.shape == (2, 8, 32) and pooled.shape == (2, 8)
    assert mask.tolist()[1] == [True, True] + [False] * 6 and (tokens[1, 2:] == 0).all()
    assert enc.tokenize("a zebra") == [enc.index["a"], enc.unk_id]
    with pytest.raises(ToyWorldError, match="at most 8"):
        enc.encode("one two three four five six seven eight nine")


def test_text_encoder_state_dict_round_trip_and_vocabulary_check():
    enc = ToyTextEncoder(extra_words=("diptych",))
    sd = enc.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    again = ToyTextEncoder.from_state_dict(sd, extra_words=("diptych",))
    assert torch.equal(again.encode("a red diptych")[0], enc.encode("a red diptych")[0])
    with pytest.raises(ToyWorldError, match="different vocabulary"):
        ToyTextEncoder.from_state_dict(sd)
    # a word's embedding does not depend on the rest of the vocabulary
    assert torch.equal(ToyTextEncoder().encode("red block")[0], enc.encode("red block")[0])
