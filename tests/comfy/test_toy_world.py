"""The toy world in real ComfyUI: MUSAR_ToyWorldLoader's VAE / CLIP behave as the toy codec and
text encoder under stock nodes, and short smoke runs of the toy scripts (base training with
bit-identical resume, dual-LoRA training through the pack's trainer, a one-image evaluation
through the real graph, the --toy demo edits)."""

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from musar_helpers import pack_module

import nodes as comfy_nodes
from toyworld import demo, train_base, train_lora
from toyworld import eval as toy_eval
from toyworld.common import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[2]
CODEC, TEXT = "toy_codec.safetensors", "toy_text_encoder.safetensors"


@pytest.fixture(autouse=True)
def _own_model_folders(monkeypatch):
    """The toy scripts add model folders (the toy LoRA) to ComfyUI's global folder_paths, as
    they must in their own process; here every test gets a copy, so later test files see the
    folders they configured (and no cached file list that includes the toy LoRA)."""
    import folder_paths

    monkeypatch.setattr(folder_paths, "folder_names_and_paths", copy.deepcopy(folder_paths.folder_names_and_paths))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})


@pytest.fixture(scope="module")
def toy(pack):
    return pack_module(pack, "nodes.toy")


@pytest.fixture(scope="module")
def world(pack):
    return pack_module(pack, "toyworld").World(seed=0, panel=128)


@pytest.fixture(scope="module")
def loaded(toy):
    return toy.load_toy_world(WEIGHTS_DIR)


def _pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def test_stock_vae_nodes_run_the_toy_codec_and_the_model_sees_its_latents(toy, loaded, world):
    model, _, vae = loaded
    codec = toy.load_codec(WEIGHTS_DIR)
    image, _ = world.sample_scene(5, 2)
    pixels = _pixels(image)
    latent = comfy_nodes.VAEEncode().encode(vae, pixels)[0]["samples"]
    torch.testing.assert_close(model.model.process_latent_in(latent), codec.encode(pixels), rtol=1e-5, atol=1e-5)
    decoded = comfy_nodes.VAEDecode().decode(vae, {"samples": latent})[0]
    torch.testing.assert_close(decoded, codec.decode(codec.encode(pixels)), rtol=1e-5, atol=1e-5)


def test_stock_clip_text_encode_gives_the_toy_features_in_t5_conventions(pack, toy, loaded):
    _, clip, _ = loaded
    enc = toy.load_text_encoder(WEIGHTS_DIR)
    text = "a red striped star on grass"
    cond = comfy_nodes.CLIPTextEncode().encode(clip, text)[0][0]
    tokens, pooled = enc.encode(text)
    torch.testing.assert_close(cond[0][0, :-1], tokens)  # words, then the end token
    torch.testing.assert_close(cond[0][0, -1], enc.positions[len(tokens)])
    torch.testing.assert_close(cond[1]["pooled_output"][0], pooled)
    ids = [t[0] for t in clip.tokenize(text)["t5xxl"][0]]
    assert ids[-1] == 1 and 0 not in ids and 1 not in ids[:-1]
    caption = pack_module(pack, "nodes.subject").encode_caption(clip, "red striped star")  # cut after </s>
    assert caption.shape[1] == 4 and enc.decode(caption[0, :3]) == ["red", "striped", "star"]


def _smoke_weights(tmp: Path) -> Path:
    out = tmp / "weights"
    out.mkdir(parents=True)
    for name in (CODEC, TEXT):  # reuse the committed codec / encoder (fitting them takes seconds)
        shutil.copy2(WEIGHTS_DIR / name, out / name)
    return out


def test_base_training_smoke_resumes_bit_identically(tmp_path):
    common = ["--steps", "4", "--square", "32", "--wide", "8", "--batch", "4", "--checkpoint-every", "2",
              "--threads", "0"]
    a, b = _smoke_weights(tmp_path / "a"), _smoke_weights(tmp_path / "b")
    assert train_base.main([*common, "--out", str(a), "--work", str(tmp_path / "a" / "work")]) == 0
    train_base.main([*common, "--out", str(b), "--work", str(tmp_path / "b" / "work"), "--stop-after", "2"])
    assert not (b / "toy_flux.safetensors").exists()
    train_base.main([*common, "--out", str(b), "--work", str(tmp_path / "b" / "work")])
    assert (a / "toy_flux.safetensors").read_bytes() == (b / "toy_flux.safetensors").read_bytes()
    log = json.loads((a / "train_base_log.json").read_text())
    assert log["steps"] == 4 and np.isfinite(log["loss_last"])


def test_lora_training_smoke_goes_through_the_pack_trainer(tmp_path, pack):
    weights = _smoke_weights(tmp_path)
    shutil.copy2(WEIGHTS_DIR / "toy_flux.safetensors", weights / "toy_flux.safetensors")
    args = ["--weights", str(weights), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
            "--steps", "2", "--pairs", "12", "--batch", "2", "--threads", "0"]
    assert train_lora.main(args) == 0
    lora = pack_module(pack, "musar.omini").load_lora_file(tmp_path / "out" / "toy_musar_lora.safetensors")
    assert lora.branch_ranks() == (4, 64)
    assert list((tmp_path / "work" / "ckpt").glob("toy_lora-step*.safetensors"))


@pytest.mark.parametrize("name", ["toy_musar_lora.safetensors", "toy_musar_lora_category.safetensors"])
def test_committed_toy_loras_load_as_dual_loras_for_the_committed_base(pack, loaded, name):
    lora = pack_module(pack, "musar.omini").load_lora_file(WEIGHTS_DIR / name)
    assert lora.branch_ranks() == (4, 64)
    patched = pack_module(pack, "nodes.lora").apply_dual_lora(loaded[0], lora, 1.0, 1.0)  # checks the fit
    assert patched is not loaded[0]
    log = json.loads((WEIGHTS_DIR / ("train_lora_log.json" if name == "toy_musar_lora.safetensors"
                                     else "train_lora_category_log.json")).read_text())
    assert log["steps"] == 1500 and log["loss_last"] < log["loss_first"]


def test_one_image_eval_through_the_real_graph(tmp_path):
    out = tmp_path / "eval"
    assert toy_eval.main(["--out", str(out), "--counts", "2", "--sets", "1", "--seeds", "1",
                          "--conditions", "c", "--steps", "4", "--threads", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"][0]["images"] == 1
    assert (out / "images" / "n2-set000-seed0_c.png").is_file()
    assert (out / "images" / "n2-set000-seed0_c_route.png").is_file()


def test_toy_demo_gives_the_shipped_workflow_toy_subjects(tmp_path, pack):
    from musar_run import convert, edits

    info = convert.object_info_in_process()
    ui = json.loads((ROOT / "workflows" / "musar_four_subjects.json").read_text())
    prompt = edits.substitute_standins(convert.ui_to_api(ui, info), info, edits.STANDINS["toy"])
    prompt = demo.prepare(prompt, tmp_path)
    subjects = [prompt[k] for k in demo._subject_chain(prompt)]
    captions = [s["inputs"]["caption"] for s in subjects]
    assert captions == list(demo.DEMO_SUBJECTS[:4])
    for s in subjects:
        assert (tmp_path / prompt[s["inputs"]["image"][0]]["inputs"]["image"]).is_file()
    text = [n["inputs"]["text"] for n in prompt.values() if n["class_type"] == "CLIPTextEncode"]
    assert text and all("four objects" in t and all(c in t for c in captions) for t in text)
    assert {n["inputs"]["lora_name"] for n in prompt.values() if n["class_type"] == "MUSAR_LoadDualLoRA"} \
        == {"toy_musar_lora.safetensors"}
    assert {n["inputs"]["cfg"] for n in prompt.values() if n["class_type"] == "KSampler"} == {demo.TOY_CFG}


def test_toy_loader_reads_only_toy_checkpoints_of_its_weights_folder(tmp_path, monkeypatch, pack, toy):
    """model_file is free text on the wire (ComfyUI 0.3.75 does not check V3 combo values): every
    name that leaves the toy weights folder is refused at validate and at execute time with the
    same message whether or not the target exists."""
    folder = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, folder)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy2(WEIGHTS_DIR / "toy_flux.safetensors", outside / "toy_flux.safetensors")
    (folder / "toy_flux_link.safetensors").symlink_to(outside / "toy_flux.safetensors")
    (folder / "notes.safetensors").write_bytes(b"x")
    monkeypatch.setenv(toy.WEIGHTS_ENV, str(folder))
    node = toy.ToyWorldLoader
    assert node.validate_inputs("toy_flux.safetensors") is True
    assert node.validate_inputs(None) is True  # linked input: checked at execute time
    escapes = [str(outside / "toy_flux.safetensors"), "../outside/toy_flux.safetensors",
               "toy_flux_link.safetensors", "../weights/toy_flux.safetensors", "..", "",
               str(outside / "missing.safetensors"), "../outside/missing.safetensors",
               "notes.safetensors", "toy_codec.safetensors", "toy_flux.safetensors\x00", 7]
    messages = []
    for name in escapes:
        message = node.validate_inputs(name)
        assert isinstance(message, str) and "expected one of toy_flux.safetensors;" in message, name
        messages.append(message.replace(repr(str(name)[:80]), "NAME"))
        with pytest.raises(pack_module(pack, "musar.errors").ModelError):
            node.execute(name)
    assert len(set(messages)) == 1  # one answer for existing and missing targets alike
