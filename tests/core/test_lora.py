"""Dual-branch LoRA math, the MUSAR file format and OminiControl's PEFT layout."""

import pytest
import torch
from safetensors.torch import save_file

from musar import lora, omini
from musar.errors import LoRAFormatError
from musar.layout import NOISY, NONE, SUBJECT, TokenLayout


def _pair(fan_in, fan_out, rank, seed):
    g = torch.Generator().manual_seed(seed)
    return lora.LoRAPair(torch.randn(rank, fan_in, generator=g), torch.randn(fan_out, rank, generator=g))


def test_each_branch_changes_only_its_own_tokens():
    layout = TokenLayout(prompt_len=3, x_len=5, caption_lens=(2,), image_lens=(4,))
    classes = layout.token_classes("joint")
    x = torch.randn(2, layout.total, 8)
    base = torch.randn(2, layout.total, 6)
    noisy, subject = _pair(8, 6, 2, 0), _pair(8, 6, 4, 1)
    only_noisy = lora.apply_dual(x, base, classes, noisy, None, 1.0, 1.0)
    only_subject = lora.apply_dual(x, base, classes, None, subject, 1.0, 1.0)
    both = lora.apply_dual(x, base, classes, noisy, subject, 0.5, 2.0)
    for out, changed in ((only_noisy, NOISY), (only_subject, SUBJECT)):
        moved = (out - base).abs().amax(dim=(0, 2)) > 0
        assert torch.equal(moved, classes == changed)
    assert torch.equal(both[:, classes == NONE], base[:, classes == NONE])
    want_x = base[:, layout.x] + 0.5 * noisy.delta(x[:, layout.x])
    torch.testing.assert_close(both[:, layout.x], want_x)
    want_ic = base[:, layout.image(0)] + 2.0 * subject.delta(x[:, layout.image(0)])
    torch.testing.assert_close(both[:, layout.image(0)], want_ic)


def test_zero_strength_and_zero_up_are_exact_no_ops():
    x, base = torch.randn(1, 5, 8), torch.randn(1, 5, 6)
    p = _pair(8, 6, 2, 0)
    assert torch.equal(lora.apply_dual(x, base, None, p, p, 0.0, 0.0), base)
    zero = lora.LoRAPair(p.down, torch.zeros_like(p.up))
    assert torch.equal(lora.apply_dual(x, base, None, zero, None, 1.0, 1.0), base)


def test_modulation_rows_split_between_branches():
    x = torch.randn(2, 2, 1, 8)
    base = torch.randn(2, 2, 1, 6)
    out = lora.apply_dual(x, base, lora.modulation_classes(x), _pair(8, 6, 2, 0), None, 1.0, 1.0, dim=1)
    assert not torch.equal(out[:, 0], base[:, 0]) and torch.equal(out[:, 1], base[:, 1])
    out = lora.apply_dual(x, base, lora.modulation_classes(x), None, _pair(8, 6, 2, 0), 1.0, 1.0, dim=1)
    assert torch.equal(out[:, 0], base[:, 0]) and not torch.equal(out[:, 1], base[:, 1])


def _dual(depth=1, single=1, hidden=16, rank_n=2, rank_s=4):
    shapes = {"img_in": (64, hidden)}
    for i in range(depth):
        shapes.update({f"double_blocks.{i}.img_attn.qkv": (hidden, 3 * hidden),
                       f"double_blocks.{i}.img_mod.lin": (hidden, 6 * hidden)})
    for i in range(single):
        shapes[f"single_blocks.{i}.linear1"] = (hidden, 7 * hidden)
    params = lora.init_trainable(shapes, rank_n, rank_s, seed=0)
    with torch.no_grad():
        for k, v in params.items():
            if k.endswith(".up"):
                v.normal_()
    return lora.from_trainable(params, {"musar.hidden_size": str(hidden)}), shapes


def test_file_round_trip_is_exact(tmp_path):
    original, _ = _dual()
    path = tmp_path / "dual.safetensors"
    lora.save_dual_lora(path, original, {"musar.train.steps": "10"})
    loaded = omini.load_lora_file(path)
    assert set(loaded.modules) == set(original.modules)
    for name, pairs in original.modules.items():
        for a, b in zip(pairs, loaded.modules[name]):
            assert torch.equal(a.down, b.down) and torch.equal(a.up * a.scale, b.up * b.scale)
    assert loaded.metadata["musar.noisy_rank"] == "2" and loaded.metadata["musar.subject_rank"] == "4"
    assert loaded.metadata["musar.train.steps"] == "10" and loaded.metadata["musar.layout"] == "musar"


def _omini_file(tmp_path, hidden=16, mlp=64, rank=2, alpha=None):
    g = torch.Generator().manual_seed(3)
    t = {}

    def add(name, fan_in, fan_out):
        t[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, fan_in, generator=g)
        t[f"transformer.{name}.lora_B.weight"] = torch.randn(fan_out, rank, generator=g)
        if alpha is not None:
            t[f"transformer.{name}.alpha"] = torch.tensor(float(alpha))

    add("x_embedder", 64, hidden)
    for part in ("to_q", "to_k", "to_v"):
        add(f"transformer_blocks.0.attn.{part}", hidden, hidden)
        add(f"single_transformer_blocks.0.attn.{part}", hidden, hidden)
    add("transformer_blocks.0.norm1.linear", hidden, 6 * hidden)
    add("single_transformer_blocks.0.proj_mlp", hidden, mlp)
    add("single_transformer_blocks.0.proj_out", hidden + mlp, hidden)
    path = tmp_path / "omini.safetensors"
    save_file(t, str(path))
    return path, t


@pytest.mark.parametrize("alpha", [None, 8.0])
def test_omini_subject_lora_matches_the_fused_weight_delta(tmp_path, alpha):
    hidden, mlp, rank = 16, 64, 2
    path, t = _omini_file(tmp_path, hidden, mlp, rank, alpha)
    dual = omini.load_lora_file(path)
    assert dual.metadata["musar.layout"] == "omini"
    scale = (alpha or rank) / rank

    def delta_w(name):
        return t[f"transformer.{name}.lora_B.weight"] @ t[f"transformer.{name}.lora_A.weight"] * scale

    fused = torch.zeros(3 * hidden + mlp, hidden)
    for i, part in enumerate(("to_q", "to_k", "to_v")):
        fused[i * hidden:(i + 1) * hidden] = delta_w(f"single_transformer_blocks.0.attn.{part}")
    fused[3 * hidden:] = delta_w("single_transformer_blocks.0.proj_mlp")
    noisy, subject = dual.modules["single_blocks.0.linear1"]
    assert noisy is None
    x = torch.randn(5, hidden, generator=torch.Generator().manual_seed(4))
    # outputs reach ~20 (scale 4): fp32 rounding of a different summation order is ~1e-5 there,
    # a wrong slice or scale is off by whole units
    tol = dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(subject.delta(x), x @ fused.t(), **tol)
    qkv = torch.cat([delta_w(f"transformer_blocks.0.attn.{p}") for p in ("to_q", "to_k", "to_v")])
    torch.testing.assert_close(dual.modules["double_blocks.0.img_attn.qkv"][1].delta(x), x @ qkv.t(), **tol)
    assert set(dual.modules) == {"img_in", "double_blocks.0.img_attn.qkv", "double_blocks.0.img_mod.lin",
                                 "single_blocks.0.linear1", "single_blocks.0.linear2"}


def test_fits_check_names_the_width_mismatch(tmp_path):
    dual, shapes = _dual(hidden=16)
    wider = {k: (a * 2, b * 2) for k, (a, b) in shapes.items()}
    with pytest.raises(LoRAFormatError, match="trained for a different model"):
        omini.check_fits(dual, wider, 32)
    with pytest.raises(LoRAFormatError, match="deeper model"):
        omini.check_fits(dual, {"img_in": shapes["img_in"]}, 16)


@pytest.mark.parametrize("content,match", [
    (b"not a safetensors file at all", "could not be read"),
    (None, "unknown layout"),
    ("prompt", "prompt side"),
])
def test_bad_lora_files_are_explained(tmp_path, content, match):
    path = tmp_path / "bad.safetensors"
    if content is None:
        save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(2, 2)}, str(path))
    elif content == "prompt":
        save_file({"transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight": torch.zeros(2, 4),
                   "transformer.transformer_blocks.0.attn.add_q_proj.lora_B.weight": torch.zeros(4, 2)},
                  str(path))
    else:
        path.write_bytes(content)
    with pytest.raises(LoRAFormatError, match=match):
        omini.load_lora_file(path)


def test_newer_format_version_is_refused(tmp_path):
    dual, _ = _dual()
    path = tmp_path / "future.safetensors"
    lora.save_dual_lora(path, dual, {})
    tensors, meta = lora.read_safetensors(path)
    meta["musar.format_version"] = "99"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(LoRAFormatError, match="update ComfyUI-MUSAR"):
        omini.load_lora_file(path)


# ---- one structural check for every malformed file ------------------------------------------
def _musar_parts(tmp_path):
    dual, _ = _dual()
    path = tmp_path / "ok.safetensors"
    lora.save_dual_lora(path, dual, {})
    return lora.read_safetensors(path)


QKV = "musar.double_blocks.0.img_attn.qkv"


def _musar_case(case):
    """(tensor edits, metadata edits) turning a good MUSAR file into a malformed one."""
    return {
        "1-D down": ({f"{QKV}.subject.down": torch.ones(16)}, {}),
        "3-D up": ({f"{QKV}.subject.up": torch.ones(48, 4, 2)}, {}),
        "0-D up": ({f"{QKV}.noisy.up": torch.tensor(1.0)}, {}),
        "empty rank": ({f"{QKV}.noisy.down": torch.ones(0, 16), f"{QKV}.noisy.up": torch.ones(48, 0)}, {}),
        "integer tensor": ({f"{QKV}.subject.down": torch.ones(4, 16, dtype=torch.int32)}, {}),
        "NaN weight": ({f"{QKV}.subject.up": torch.full((48, 4), float("nan"))}, {}),
        "inf weight": ({f"{QKV}.noisy.down": torch.full((2, 16), float("inf"))}, {}),
        "ranks disagree": ({f"{QKV}.subject.up": torch.ones(48, 3)}, {}),
        "missing up": ({f"{QKV}.subject.up": None}, {}),
        "GELU target": ({"musar.double_blocks.0.img_mlp.1.subject.down": torch.ones(4, 16),
                         "musar.double_blocks.0.img_mlp.1.subject.up": torch.ones(16, 4)}, {}),
        "prompt-side target": ({"musar.double_blocks.0.txt_attn.qkv.noisy.down": torch.ones(2, 16),
                                "musar.double_blocks.0.txt_attn.qkv.noisy.up": torch.ones(48, 2)}, {}),
        "block as target": ({"musar.double_blocks.0.noisy.down": torch.ones(2, 16),
                             "musar.double_blocks.0.noisy.up": torch.ones(48, 2)}, {}),
        "odd key": ({f"{QKV}.subject.weight": torch.ones(2, 2)}, {}),
        "fractional version": ({}, {"musar.format_version": "1.5"}),
        "text version": ({}, {"musar.format_version": "one"}),
        "NaN alpha": ({}, {"musar.subject_alpha": "nan"}),
        "negative alpha": ({}, {"musar.noisy_alpha": "-2"}),
        "text alpha": ({}, {"musar.noisy_alpha": "[1, 2]"}),
        "rank metadata lies": ({}, {"musar.subject_rank": "8"}),
        "no tensors": ("all", {}),
    }[case]


@pytest.mark.parametrize("case, key", [
    ("1-D down", f"{QKV}.subject.down"), ("3-D up", f"{QKV}.subject.up"),
    ("0-D up", f"{QKV}.noisy.up"), ("empty rank", f"{QKV}.noisy.down"),
    ("integer tensor", f"{QKV}.subject.down"), ("NaN weight", f"{QKV}.subject.up"),
    ("inf weight", f"{QKV}.noisy.down"), ("ranks disagree", f"{QKV}.subject"),
    ("missing up", f"{QKV}.subject.up"), ("GELU target", "double_blocks.0.img_mlp.1"),
    ("prompt-side target", "txt_attn"), ("block as target", "musar.double_blocks.0.noisy.down"),
    ("odd key", "subject.weight"), ("fractional version", "musar.format_version"),
    ("text version", "musar.format_version"), ("NaN alpha", "musar.subject_alpha"),
    ("negative alpha", "musar.noisy_alpha"), ("text alpha", "musar.noisy_alpha"),
    ("rank metadata lies", "musar.subject_rank"), ("no tensors", "no LoRA tensors"),
])
def test_every_malformed_musar_file_is_a_format_error_naming_the_key(tmp_path, case, key):
    tensors, meta = _musar_parts(tmp_path)
    edits, meta_edits = _musar_case(case)
    if edits == "all":
        tensors = {}
    else:
        for k, v in edits.items():
            tensors.pop(k, None) if v is None else tensors.__setitem__(k, v)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={**meta, **meta_edits})
    with pytest.raises(LoRAFormatError) as err:
        omini.load_lora_file(path)
    assert key in str(err.value) and "'bad.safetensors'" in str(err.value), str(err.value)


def _omini_edit(t, case):
    q = "transformer.transformer_blocks.0.attn.to_q"
    k = "transformer.transformer_blocks.0.attn.to_k"
    if case == "vector alpha":
        t[f"{q}.alpha"] = torch.tensor([4.0, 4.0])
        return f"{q}.alpha"
    if case == "NaN alpha":
        t[f"{q}.alpha"] = torch.tensor(float("nan"))
        return f"{q}.alpha"
    if case == "q and k of different sizes":
        t[f"{k}.lora_B.weight"] = torch.ones(8, 2)
        return "q/k/v output sizes"
    if case == "parts read different widths":
        t[f"{k}.lora_A.weight"] = torch.ones(2, 12)
        return "input widths"
    if case == "missing lora_B":
        del t[f"{q}.lora_B.weight"]
        return f"{q}.lora_B.weight"
    if case == "1-D lora_A":
        t[f"{q}.lora_A.weight"] = torch.ones(16)
        return f"{q}.lora_A.weight"
    if case == "3-D lora_B":
        t[f"{q}.lora_B.weight"] = torch.ones(16, 2, 1)
        return f"{q}.lora_B.weight"
    if case == "NaN weight":
        t[f"{k}.lora_A.weight"] = torch.full((2, 16), float("nan"))
        return f"{k}.lora_A.weight"
    if case == "non-Linear target":
        t["transformer.transformer_blocks.0.ff.net.1.lora_A.weight"] = torch.ones(2, 16)
        t["transformer.transformer_blocks.0.ff.net.1.lora_B.weight"] = torch.ones(16, 2)
        return "ff.net.1"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["vector alpha", "NaN alpha", "q and k of different sizes",
                                  "parts read different widths", "missing lora_B", "1-D lora_A",
                                  "3-D lora_B", "NaN weight", "non-Linear target"])
def test_every_malformed_omini_file_is_a_format_error_naming_the_key(tmp_path, case):
    _, t = _omini_file(tmp_path, alpha=2.0)
    key = _omini_edit(t, case)
    path = tmp_path / "bad_omini.safetensors"
    save_file(t, str(path))
    with pytest.raises(LoRAFormatError) as err:
        omini.load_lora_file(path)
    assert key in str(err.value) and "'bad_omini.safetensors'" in str(err.value), str(err.value)


# ---- alpha: scale = alpha / rank ------------------------------------------------------------
def test_alpha_metadata_scales_each_branch_by_alpha_over_rank(tmp_path):
    dual, _ = _dual(rank_n=2, rank_s=4)
    path = tmp_path / "dual.safetensors"
    lora.save_dual_lora(path, dual, {})
    tensors, meta = lora.read_safetensors(path)
    assert meta["musar.noisy_alpha"] == "2" and meta["musar.subject_alpha"] == "4"  # alpha = rank
    save_file(tensors, str(path), metadata={**meta, "musar.noisy_alpha": "1", "musar.subject_alpha": "12"})
    scaled = omini.load_lora_file(path)
    for name, (noisy, subject) in dual.modules.items():
        x = torch.randn(3, noisy.down.shape[1])
        got_n, got_s = scaled.modules[name]
        torch.testing.assert_close(got_n.delta(x), noisy.delta(x) * 0.5)  # 1 / 2
        torch.testing.assert_close(got_s.delta(x), subject.delta(x) * 3.0)  # 12 / 4
    resaved = tmp_path / "resaved.safetensors"  # the scale goes into up; alpha back to rank
    lora.save_dual_lora(resaved, scaled, {})
    again = omini.load_lora_file(resaved)
    for name, pairs in scaled.modules.items():
        x = torch.randn(3, pairs[0].down.shape[1])
        for a, b in zip(pairs, again.modules[name]):
            torch.testing.assert_close(b.delta(x), a.delta(x))
            assert b.scale == 1.0


def test_a_branch_of_rank_zero_saves_without_alpha_and_loads(tmp_path):
    dual, _ = _dual(rank_n=0, rank_s=4)
    path = tmp_path / "subject_only.safetensors"
    lora.save_dual_lora(path, dual, {})
    loaded = omini.load_lora_file(path)
    assert "musar.noisy_alpha" not in loaded.metadata and loaded.metadata["musar.noisy_rank"] == "0"
    assert not loaded.has_branch("noisy") and loaded.has_branch("subject")
