"""The multi-reference toy base in real ComfyUI: its training forward equals ComfyUI's Flux forward
with ref_latents under the "index" method (padded references hidden), the 48 px reference
pictures reach the model as the training latents, the loader gives toy_flux_refs* its own text
encoder, and smoke runs of every stage: 2-step training with a bit-identical resume, one gate
image and one evaluation case (hard regions included) through the real graph, parts merged."""

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange
from musar_helpers import pack_module

import nodes as comfy_nodes
from toyworld import multiref as mr
from toyworld import refeval, refgate, train_base, train_refbase
from toyworld.common import WEIGHTS_DIR
from toyworld.world import Identity, World

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _own_model_folders(monkeypatch):
    """Scripts may change ComfyUI's global folder lists: every test gets its own copy."""
    import folder_paths

    monkeypatch.setattr(folder_paths, "folder_names_and_paths", copy.deepcopy(folder_paths.folder_names_and_paths))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})


def _unpack(tokens):
    return rearrange(tokens, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=8, w=8, ph=2, pw=2)


def test_training_forward_equals_comfyuis_forward_with_index_references(pack, standins):
    """Sample 0 has three references, sample 1 one (two padded slots, hidden as keys): each equals
    ComfyUI's Flux forward called with its own ref_latents and ref_latents_method="index"."""
    lay = pack_module(pack, "musar.layout")
    dm = standins.build_flux(standins.flux_unet_config(**train_base.SIZES["small"]), seed=5).model.diffusion_model
    g = torch.Generator().manual_seed(0)
    x, refs = torch.randn(2, 16, 16, 16, generator=g), torch.randn(2, 3, 16, 6, 6, generator=g)
    ctx, y, t = torch.randn(2, 9, 64, generator=g), torch.randn(2, 32, generator=g), torch.rand(2, generator=g)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 6:] = False  # sample 1's prompt is 6 tokens long
    ref_tokens = lay.pack_latent(refs.flatten(0, 1))[0].reshape(2, 27, 64)  # (sample, reference, token) order
    with torch.no_grad():
        got = _unpack(train_refbase.predict(pack, dm, lay.pack_latent(x)[0], ref_tokens, torch.tensor([3, 1]),
                                            ctx, valid, y, t))
        for i, (n, length) in enumerate(((3, 9), (1, 6))):
            ref_latents = [refs[i:i + 1, j] for j in range(n)]
            want = dm(x[i:i + 1], t[i:i + 1], ctx[i:i + 1, :length], y[i:i + 1], None,
                      ref_latents=ref_latents, ref_latents_method="index")
            torch.testing.assert_close(got[i:i + 1], want, rtol=1e-4, atol=1e-4)
            other = dm(x[i:i + 1], t[i:i + 1], ctx[i:i + 1, :length], y[i:i + 1], None,
                       ref_latents=ref_latents, ref_latents_method="uxo")
            assert (other - want).abs().max() > 1e-2  # the ids matter: another method is far off


def test_reference_pictures_reach_the_model_as_the_training_latents(pack):
    toy = pack_module(pack, "nodes.testing.toy")
    model, clip, vae = toy.load_toy_world(WEIGHTS_DIR)
    enc = pack_module(pack, "toyworld.data").ToyEncoders(pack, model, clip, vae)
    idents = [Identity.parse(n) for n in ("red and black striped block", "cyan and white plain block")]
    pixels = torch.stack([torch.from_numpy(np.asarray(mr.reference_picture(i), dtype=np.float32) / 255.0)
                          for i in idents])
    latent = comfy_nodes.VAEEncode().encode(vae, pixels)[0]["samples"]
    assert latent.shape == (2, 16, 6, 6)
    cells = np.stack([mr.reference_cells(i) for i in idents])
    torch.testing.assert_close(model.model.process_latent_in(latent), enc.latents(cells), rtol=1e-5, atol=1e-5)


def _train(out: Path, work: Path, *extra) -> int:
    return train_refbase.main(["--steps", "4", "--batch", "2", "--checkpoint-every", "2", "--threads", "0",
                               "--no-gate", "--gate-every", "0", "--out", str(out), "--work", str(work), *extra])


def test_refbase_training_smoke_resumes_bit_identically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(a, tmp_path / "wa") == 0
    _train(b, tmp_path / "wb", "--stop-after", "2")
    assert not (b / mr.REF_MODEL_FILE).exists()
    _train(b, tmp_path / "wb")
    assert (a / mr.REF_MODEL_FILE).read_bytes() == (b / mr.REF_MODEL_FILE).read_bytes()
    log = json.loads((a / "train_refbase_log.json").read_text())
    assert log["steps"] == 4 and np.isfinite(log["loss_last"]) and log["settings"]["data"]["ref_method"] == "index"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step-trained multi-reference base in its own weights folder."""
    out = tmp_path_factory.mktemp("refbase")
    assert train_refbase.main(["--steps", "2", "--batch", "2", "--threads", "0", "--no-gate", "--gate-every", "0",
                               "--out", str(out), "--work", str(out / "run")]) == 0
    return out


def test_loader_gives_the_multi_reference_base_its_own_text_encoder(pack, trained):
    toy = pack_module(pack, "nodes.testing.toy")
    assert toy.text_file_for(mr.REF_MODEL_FILE) == toy.REF_TEXT_FILE and toy.text_file_for(toy.BASE_FILE) == toy.TEXT_FILE
    _, clip, _ = toy.load_toy_world(trained, mr.REF_MODEL_FILE)
    ids = [t[0] for t in clip.tokenize(mr.ref_prompt(["top left", "bottom right"], "grey"))["t5xxl"][0]]
    assert toy.ID_SHIFT + 1 not in ids  # no <unk>
    _, plain, _ = toy.load_toy_world(WEIGHTS_DIR)
    assert toy.ID_SHIFT + 1 in [t[0] for t in plain.tokenize("image 1 at top left")["t5xxl"][0]]


def test_one_gate_image_through_the_real_graph(trained, tmp_path):
    cases = [c for c in mr.gate_cases(World(0)) if c["id"] in ("single-000", "four-048")]
    result = refgate.ref_gate(trained / mr.REF_MODEL_FILE, trained, tmp_path / "gate", threads=0, cases=cases)
    assert result["images"] == 2 and [r["id"] for r in result["rows"]] == ["single-000", "four-048"]
    assert set(result["rates"]) >= {"single_right", "four_right"} and result["seeds"] == [1_000_000, 1_000_048]
    assert result["passed"] is False  # two training steps draw no blocks


def test_one_evaluation_case_with_its_counterfactual_and_regions_through_the_real_graph(trained, tmp_path):
    common = ["--weights", str(trained), "--counts", "2:1", "--samples", "1", "--threads", "0"]
    first, second, merged = tmp_path / "first", tmp_path / "second", tmp_path / "merged"
    assert refeval.main([*common, "--out", str(first), "--conditions", "off,hard"]) == 0
    records = [json.loads(x) for x in (first / "records.jsonl").read_text().splitlines()]
    assert sorted((r["condition"], r["variant"]) for r in records) == [
        ("hard", "main"), ("hard", "swap"), ("off", "main"), ("off", "swap")]
    assert all(len(r["cells"]) == 256 for r in records)
    assert (first / "images" / "n2-000_hard_main_route.png").is_file()
    assert set(json.loads((first / "models.json").read_text())) == {
        mr.REF_MODEL_FILE, "toy_ref_text_encoder.safetensors", "toy_codec.safetensors"}
    assert refeval.main([*common, "--out", str(second), "--conditions", "soft"]) == 0
    assert refeval.main(["--out", str(merged), "--merge", str(first), str(second)]) == 0
    summary = json.loads((merged / "summary.json").read_text())
    assert {(r["condition"], r["n"]) for r in summary["rows"]} == {("off", 2), ("hard", 2), ("soft", 2)}
    assert {c["pair"] for c in summary["comparisons"]} == {"hard - off", "soft - off"}
    assert "clusters" in summary["rows"][0]["clustered"]["subject_right"]
    other = tmp_path / "other"  # resuming those records with another model file: refused
    shutil.copytree(trained, other)
    (other / mr.REF_MODEL_FILE).write_bytes((other / mr.REF_MODEL_FILE).read_bytes()[:-2] + b"\x00\x00")
    with pytest.raises(SystemExit, match="changed"):
        refeval.main(["--weights", str(other), "--counts", "2:1", "--out", str(first), "--conditions", "off",
                      "--threads", "0"])

