"""Toy latent codec (FLUX latent geometry, PCA) and toy text encoder: exact, deterministic stand-ins."""

import numpy as np
import pytest
import torch

from toyworld.codec import ToyCodec, depth_to_space, psnr, space_to_depth
from toyworld.detector import BACKGROUND_CLASS, COLOUR_NAMES, PATTERN_CLASS, classify_pixels
from toyworld.errors import ToyWorldError
from toyworld.textenc import ToyTextEncoder
from toyworld.world import Subject, World, multi_caption

# Measured (48-image fits, seeds 0-2, 96 held-out scenes): mean PSNR 28.6 dB, worst scene 24.9 dB.
MIN_MEAN_PSNR, MIN_SCENE_PSNR = 27.0, 23.5


@pytest.fixture(scope="module")
def world():
    return World(seed=0)


@pytest.fixture(scope="module")
def codec(world):
    return ToyCodec.fit_world(world, n_images=48, seed=0)


@pytest.fixture(scope="module")
def heldout(world):
    scenes = [world.sample_scene(90_000 + s, 1 + s % 4, "heldout", background=world.backgrounds[s % 6])
              for s in range(48)]
    pixels = torch.from_numpy(np.stack([np.asarray(im, np.float32) / 255 for im, _ in scenes]))
    return pixels, [t for _, t in scenes]


def test_space_to_depth_is_inverted_by_depth_to_space():
    x = torch.rand(2, 16, 24, 3)
    assert space_to_depth(x, 8).shape == (2, 2, 3, 192)
    assert torch.equal(depth_to_space(space_to_depth(x, 8), 8), x)


def test_latents_have_flux_geometry_and_roughly_unit_variance(codec, heldout):
    pixels, _ = heldout
    z = codec.encode(pixels)
    assert z.shape == (48, 16, 16, 16) and z.dtype == torch.float32
    assert abs(float(z.mean())) < 0.1
    std = z.std(dim=(0, 2, 3))
    assert (std > 0.75).all() and (std < 1.35).all()
    wide = codec.encode(torch.rand(1, 64, 128, 3))
    assert wide.shape == (1, 16, 8, 16) and codec.decode(wide).shape == (1, 64, 128, 3)


def test_round_trip_psnr_on_heldout_scenes_is_high(codec, heldout):
    pixels, _ = heldout
    out = codec.decode(codec.encode(pixels))
    assert out.min() >= 0 and out.max() <= 1
    scene_psnr = [psnr(a, b) for a, b in zip(pixels, out, strict=True)]
    assert np.mean(scene_psnr) >= MIN_MEAN_PSNR and min(scene_psnr) >= MIN_SCENE_PSNR, scene_psnr


def test_decode_then_encode_is_the_identity_on_latents(codec):
    z = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.3
    x = torch.from_numpy(np.full((2, 32, 32, 3), 0.5, np.float32))
    z = codec.encode(x) + z  # stay near the data so decode's clamp stays inactive
    assert torch.allclose(codec.encode(codec.decode(z)), z, atol=1e-4)


def test_colours_stay_classifiable_after_a_round_trip(codec, heldout):
    pixels, truths = heldout
    out = codec.decode(codec.encode(pixels)).numpy()
    from toyworld.components import erode
    kept = total = 0
    for img, truth in zip(out, truths, strict=True):
        cls = classify_pixels(img)
        for t in truth.subjects:
            inner = erode(t.mask, 2)
            want = COLOUR_NAMES.index(t.subject.colour)
            got = cls[inner]
            kept += int(((got == want) | (got == PATTERN_CLASS)).sum())
            total += int(inner.sum())
        outside = np.ones(cls.shape, bool)
        for t in truth.subjects:
            outside &= ~t.mask
        assert (cls[erode(outside, 2)] == BACKGROUND_CLASS).mean() > 0.99
    assert kept / total > 0.98


def test_fit_is_deterministic_and_state_dict_is_plain_tensors(world, codec, tmp_path):
    again = ToyCodec.fit_world(world, n_images=48, seed=0)
    sd = codec.state_dict()
    assert set(sd) == {"mean", "components", "scale"} and all(isinstance(v, torch.Tensor) for v in sd.values())
    assert all(torch.equal(sd[k], again.state_dict()[k]) for k in sd)
    safetensors = pytest.importorskip("safetensors.torch")
    safetensors.save_file(sd, str(tmp_path / "codec.safetensors"))
    loaded = ToyCodec.from_state_dict(safetensors.load_file(str(tmp_path / "codec.safetensors")))
    x = torch.rand(1, 32, 32, 3)
    assert torch.equal(loaded.encode(x), codec.encode(x))


def test_codec_rejects_bad_shapes_with_musar_errors(codec):
    with pytest.raises(ToyWorldError, match="multiples of 8"):
        codec.encode(torch.rand(1, 30, 32, 3))
    with pytest.raises(ToyWorldError, match="16"):
        codec.decode(torch.rand(1, 4, 4, 4))
    with pytest.raises(ToyWorldError, match="missing"):
        ToyCodec.from_state_dict({"mean": torch.zeros(192)})


def test_text_encoder_is_deterministic_and_binds_words_to_positions():
    enc = ToyTextEncoder()
    text = multi_caption([Subject("star", "red", "striped"), Subject("circle", "blue", "plain")], "grass")
    t1, p1 = enc.encode(text)
    t2, p2 = ToyTextEncoder().encode(text)
    assert torch.equal(t1, t2) and torch.equal(p1, p2)
    assert t1.shape == (len(enc.tokenize(text)), 64) and p1.shape == (32,)
    assert enc.decode(t1) == [enc.vocab[i] for i in enc.tokenize(text)]  # every word recoverable
    assert " ".join(enc.decode(t1)).endswith("a red striped star and a blue plain circle are placed together .")
    a, pa = enc.encode("a red star and a blue circle")
    b, pb = enc.encode("a blue star and a red circle")
    assert not torch.allclose(a, b) and torch.allclose(pa, pb)  # order lives in tokens, not in pooled
    assert not torch.equal(ToyTextEncoder(seed=1).encode(text)[0], t1)


def test_text_encoder_padding_unknown_words_and_length_limit():
    enc = ToyTextEncoder(dim=32, pooled_dim=8, max_length=8)
    tokens, mask, pooled = enc.encode_batch(["a red star", "a zebra"])
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
    assert torch.equal(ToyTextEncoder().encode("red star")[0], enc.encode("red star")[0])
