"""The toy world in real ComfyUI: MUSAR_ToyWorldLoader's VAE / CLIP behave as the toy codec and
text encoder under stock nodes, the loader reads nothing outside its folder, the committed models
draw what their gates measured (a few images), and short smoke runs of every stage (base training
with a bit-identical resume, both LoRAs through the pack's trainer, one evaluation case with its
counterfactual through the real graph, the --toy demo edits). Never a real training run."""

import copy
import json
import random
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
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads cost more than they give (tests/conftest.py)
CODEC, TEXT, BASE = "toy_codec.safetensors", "toy_text_encoder.safetensors", "toy_flux.safetensors"
COMMITTED = ["--weights", str(WEIGHTS_DIR)]  # the committed demo models, not a training chain's cache


@pytest.fixture(autouse=True)
def _own_model_folders(monkeypatch):
    """The toy scripts add model folders (the toy LoRAs) to ComfyUI's global folder_paths, as
    they must in their own process; here every test gets a copy, so later test files see the
    folders they configured (and no cached file list that includes the toy LoRAs)."""
    import folder_paths

    monkeypatch.setattr(folder_paths, "folder_names_and_paths", copy.deepcopy(folder_paths.folder_names_and_paths))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})


@pytest.fixture(scope="module")
def toy(pack):
    return pack_module(pack, "nodes.testing.toy")


@pytest.fixture(scope="module")
def W(pack):
    return pack_module(pack, "toyworld.world")


@pytest.fixture(scope="module")
def loaded(toy):
    return toy.load_toy_world(WEIGHTS_DIR)


def _pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def test_stock_vae_nodes_run_the_exact_toy_codec_and_the_model_sees_its_latents(toy, loaded, W):
    model, _, vae = loaded
    codec = toy.load_codec(WEIGHTS_DIR)
    placed, background = W.World(0).sample_scene(random.Random(5), 3)
    pixels = _pixels(W.render(placed, background))
    latent = comfy_nodes.VAEEncode().encode(vae, pixels)[0]["samples"]
    torch.testing.assert_close(model.model.process_latent_in(latent), codec.encode(pixels), rtol=1e-5, atol=1e-5)
    decoded = comfy_nodes.VAEDecode().decode(vae, {"samples": latent})[0]
    assert torch.equal((decoded * 255).round(), (pixels * 255).round())  # exact round trip


def test_training_latents_by_colour_lookup_equal_encoding_the_image(pack, loaded, W):
    model, clip, vae = loaded
    enc = pack_module(pack, "toyworld.data").ToyEncoders(pack, model, clip, vae)
    rnd, world = random.Random(1), W.World(0)
    cells = np.stack([W.cell_indices(*world.sample_scene(rnd, 1 + i)) for i in range(4)])
    pixels = pack_module(pack, "toyworld.data").pixels_of(cells)
    torch.testing.assert_close(enc.latents(cells), enc.image(pixels), rtol=1e-5, atol=1e-5)


def test_stock_clip_text_encode_gives_the_toy_features_in_t5_conventions(pack, toy, loaded):
    _, clip, _ = loaded
    enc = toy.load_text_encoder(WEIGHTS_DIR)
    text = "a striped block in the top left on grey."
    cond = comfy_nodes.CLIPTextEncode().encode(clip, text)[0][0]
    tokens, pooled = enc.encode(text)
    torch.testing.assert_close(cond[0][0, :-1], tokens)  # words, then the end token
    last_word = enc.embeddings[enc.tokenize(text)[-1]]  # the end token: position + context of the last word
    torch.testing.assert_close(cond[0][0, -1], enc.positions[len(tokens)] + enc.context @ last_word)
    torch.testing.assert_close(cond[1]["pooled_output"][0], pooled)
    ids = [t[0] for t in clip.tokenize(text)["t5xxl"][0]]
    assert ids[-1] == 1 and 0 not in ids and 1 not in ids[:-1]
    caption = pack_module(pack, "nodes.subject").encode_caption(clip, "striped block")  # cut after </s>
    assert caption.shape[1] == 3 and enc.decode(caption[0, :2]) == ["striped", "block"]


def test_committed_base_draws_prompted_blocks(pack, W, tmp_path):
    """A few images of what base_gate.json measured at scale (the committed medium base passed
    every part of its gate, docs/TOY_WORLD.md section 4): one block with named colours."""
    gate = json.loads((WEIGHTS_DIR / "base_gate.json").read_text())
    assert gate["sampling"] == pack_module(pack, "toyworld.graph").SAMPLING and gate["passed"]
    assert all(gate["rates"][k]["rate"] >= v for k, v in gate["thresholds"].items())
    graph, det = pack_module(pack, "toyworld.graph"), pack_module(pack, "toyworld.detector")
    placed = [W.Placed(W.Identity.parse("red and blue striped block"), "top right")]
    with graph.Runner(pack, WEIGHTS_DIR, tmp_path) as runner:
        images = runner.run(graph.toy_graph(W.scene_caption(placed, "sand", True), [], None, seed=3,
                                            lora=None, batch=4))["images"]
    assert sum(det.score(im, placed)["all_right"] for im in images) >= 3


@pytest.mark.parametrize("attention", ["static", "dense"])
def test_committed_loras_fit_the_committed_base_and_passed_their_gate(pack, loaded, attention):
    lora = pack_module(pack, "musar.omini").load_lora_file(WEIGHTS_DIR / f"toy_lora_{attention}.safetensors")
    assert lora.branch_ranks() == (4, 64)
    patched = pack_module(pack, "nodes.lora").apply_dual_lora(loaded[0], lora, 1.0, 1.0)  # checks the fit
    assert patched is not loaded[0]
    log = json.loads((WEIGHTS_DIR / f"train_lora_{attention}_log.json").read_text())
    assert log["settings"]["attention"] == attention and log["loss_last"] < log["loss_first"]
    assert json.loads((WEIGHTS_DIR / f"lora_gate_{attention}.json").read_text())["passed"]


def _smoke_weights(tmp: Path, with_base: bool = False) -> Path:
    out = tmp / "weights"
    out.mkdir(parents=True)
    for name in (CODEC, TEXT, *([BASE] if with_base else [])):
        shutil.copy2(WEIGHTS_DIR / name, out / name)
    return out


def test_base_training_smoke_resumes_bit_identically(tmp_path):
    common = ["--steps", "4", "--batch", "4", "--checkpoint-every", "2", "--threads", "0", "--no-gate"]
    a, b = _smoke_weights(tmp_path / "a"), _smoke_weights(tmp_path / "b")
    assert train_base.main([*common, "--out", str(a), "--work", str(tmp_path / "a" / "work")]) == 0
    train_base.main([*common, "--out", str(b), "--work", str(tmp_path / "b" / "work"), "--stop-after", "2"])
    assert not (b / BASE).exists()
    train_base.main([*common, "--out", str(b), "--work", str(tmp_path / "b" / "work")])
    assert (a / BASE).read_bytes() == (b / BASE).read_bytes()
    log = json.loads((a / "train_base_log.json").read_text())
    assert log["steps"] == 4 and np.isfinite(log["loss_last"])


def test_both_loras_train_through_the_pack_trainer_and_differ(tmp_path, pack):
    weights = _smoke_weights(tmp_path, with_base=True)
    tensors = {}
    for attention in ("static", "dense"):
        args = ["--attention", attention, "--weights", str(weights), "--out", str(tmp_path / "out"),
                "--work", str(tmp_path / attention), "--steps", "2", "--pairs", "12", "--batch", "2",
                "--threads", "0", "--no-gate"]
        assert train_lora.main(args) == 0
        path = tmp_path / "out" / f"toy_lora_{attention}.safetensors"
        lora = pack_module(pack, "musar.omini").load_lora_file(path)
        assert lora.branch_ranks() == (4, 64)
        assert list((tmp_path / attention / "ckpt").glob(f"toy_lora_{attention}-step*.safetensors"))
        from safetensors.torch import load_file

        tensors[attention] = load_file(str(path))
    assert any(not torch.equal(v, tensors["dense"][k]) for k, v in tensors["static"].items())


def test_one_case_with_its_counterfactual_through_the_real_graph(tmp_path):
    out = tmp_path / "eval"
    assert toy_eval.main([*COMMITTED, "--out", str(out), "--counts", "2:1", "--conditions", "text,c", "--samples", "1",
                          "--threads", "0", "--verify", "1"]) == 0
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert sorted((r["condition"], r["variant"]) for r in records) == [("c", "main"), ("c", "swap"), ("text", "main")]
    assert all(len(r["cells"]) == 256 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert {(r["condition"], r["n"]) for r in summary["rows"]} == {("text", 2), ("c", 2)}
    assert json.loads((out / "verify.json").read_text()) == {"rerun": 3, "identical": 3}
    for name in ("n2-000_c_main.png", "n2-000_c_swap.png", "n2-000_c_main_route.png"):
        assert (out / "images" / name).is_file()
    assert (out / "figures" / "toy_eval_2_subjects.png").is_file()
    # a part run side by side on another condition, merged with the first into one table
    part = tmp_path / "oracle"
    assert toy_eval.main([*COMMITTED, "--out", str(part), "--counts", "2:1", "--conditions", "oracle", "--samples", "0",
                          "--threads", "0"]) == 0
    merged = tmp_path / "merged"
    assert toy_eval.main(["--out", str(merged), "--merge", str(out), str(part)]) == 0
    assert {(r["condition"], r["n"]) for r in json.loads((merged / "summary.json").read_text())["rows"]} == \
        {("text", 2), ("oracle", 2), ("c", 2)}
    assert len((merged / "records.jsonl").read_text().splitlines()) == 4
    with pytest.raises(SystemExit, match="overlap"):
        toy_eval.main(["--out", str(tmp_path / "twice"), "--merge", str(out), str(out)])
    assert set(json.loads((merged / "models.json").read_text())) == {
        "toy_flux.safetensors", "toy_text_encoder.safetensors", "toy_codec.safetensors", "toy_lora_static.safetensors"}
    # resuming those records with another LoRA file under the same name is refused
    other = tmp_path / "other_loras"
    other.mkdir()
    shutil.copy(toy_eval.common.WEIGHTS_DIR / "toy_lora_dense.safetensors", other / "toy_lora_static.safetensors")
    with pytest.raises(SystemExit, match="toy_lora_static.safetensors changed"):
        toy_eval.main([*COMMITTED, "--out", str(out), "--counts", "2:1", "--conditions", "c", "--loras", str(other), "--threads", "0"])


def test_toy_demo_gives_the_shipped_workflow_held_out_subjects_without_colour_words(tmp_path, pack, W):
    from musar_run import convert, edits

    info = convert.object_info_in_process()
    ui = json.loads((ROOT / "workflows" / "musar_four_subjects.json").read_text())
    prompt = edits.substitute_standins(convert.ui_to_api(ui, info), info, edits.STANDINS["toy"])
    prompt = demo.prepare(prompt, tmp_path)
    held = {i.name for i in W.World(0).heldout}
    assert set(demo.DEMO_SUBJECTS) <= held
    subjects = [prompt[k] for k in demo._subject_chain(prompt)]
    assert [s["inputs"]["caption"] for s in subjects] == [W.Identity.parse(n).item for n in demo.DEMO_SUBJECTS]
    for s in subjects:
        assert (tmp_path / prompt[s["inputs"]["image"][0]]["inputs"]["image"]).is_file()
    texts = {n["inputs"]["text"] for n in prompt.values() if n["class_type"] == "CLIPTextEncode"}
    expected = W.scene_caption(demo.demo_placed(W, 4), demo.DEMO_BACKGROUND, False)
    assert texts == {expected, ""} and not set(W.COLOURS) & set(expected.replace(",", " ").split())
    assert {n["inputs"]["cfg"] for n in prompt.values() if n["class_type"] == "KSampler"} == \
        {pack_module(pack, "toyworld.graph").SAMPLING["cfg"]}
    assert {n["inputs"]["lora_name"] for n in prompt.values() if n["class_type"] == "MUSAR_LoadDualLoRA"} \
        == {demo.LORA_FILES["static"]}


def test_toy_demo_grid_runs_the_shipped_workflow_and_tallies_what_the_detector_reads(tmp_path, pack, W):
    """One grid case under each condition (``--quick``) through the shipped four-subject workflow:
    the tally counts the detector's verdicts of the images the figure shows; the fixed cases are
    held-out identities of the demo's own case seed."""
    record = demo.make_demo(tmp_path, count=1, refs=0)
    assert (tmp_path / "toy_demo.png").is_file()
    saved = json.loads((tmp_path / "toy_demo.json").read_text())
    assert saved["grid"] == record["grid"] and set(record["grid"]) == set(demo.GRID_CONDITIONS)
    for t in record["grid"].values():
        assert t["cases"] == 1 and t["subjects"] == 4 and 0 <= t["subjects_right"] <= 4
        assert t["all_right"] == int(t["subjects_right"] == 4)
    case = demo.grid_cases(W, 1)[0]
    held = {i.name for i in W.World(0).heldout}
    assert case["n"] == 4 and set(case["subjects"]) <= held
    assert demo.grid_cases(W, 1) == [case]  # fixed: the same cases every run


def test_toy_loader_reads_only_toy_checkpoints_of_its_weights_folder(tmp_path, monkeypatch, pack, toy):
    """model_file is free text on the wire (ComfyUI 0.3.75 does not check V3 combo values): every
    name that leaves the toy weights folder is refused at validate and at execute time with the
    same message whether or not the target exists."""
    folder = _smoke_weights(tmp_path, with_base=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy2(WEIGHTS_DIR / BASE, outside / BASE)
    (folder / "toy_flux_link.safetensors").symlink_to(outside / BASE)
    (folder / "notes.safetensors").write_bytes(b"x")
    monkeypatch.setenv(toy.WEIGHTS_ENV, str(folder))
    node = toy.ToyWorldLoader
    assert node.validate_inputs(BASE) is True
    assert node.validate_inputs(None) is True  # linked input: checked at execute time
    escapes = [str(outside / BASE), "../outside/toy_flux.safetensors", "toy_flux_link.safetensors",
               "../weights/toy_flux.safetensors", "..", "", str(outside / "missing.safetensors"),
               "../outside/missing.safetensors", "notes.safetensors", CODEC, BASE + "\x00", 7]
    messages = []
    for name in escapes:
        message = node.validate_inputs(name)
        assert isinstance(message, str) and "expected one of toy_flux.safetensors;" in message, name
        messages.append(message.replace(repr(str(name)[:80]), "NAME"))
        with pytest.raises(pack_module(pack, "musar.errors").ModelError):
            node.execute(name)
    assert len(set(messages)) == 1  # one answer for existing and missing targets alike


def test_route_study_reads_where_the_route_sends_each_block(tmp_path):
    """One case under static routing alone and under the shipped dynamic routing: the dynamic run
    records one set of shares per routed step (steps 5..20 of 20 at start 0.2), the static one none."""
    from toyworld import route_study

    out = tmp_path / "routes"
    assert route_study.main([*COMMITTED, "--out", str(out), "--n", "2", "--cases", "1", "--variants", "b,c", "--threads", "0"]) == 0
    records = {r["variant"]: r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())}
    assert "routes" not in records["b"] and len(records["b"]["right"]) == 2
    steps = records["c"]["routes"]
    assert 10 <= len(steps) < 20 and all(len(step) == 2 for step in steps)
    assert all(abs(s["own"] + s["other"] + s["none"] - 1) < 1e-6 and min(s.values()) >= 0 for step in steps for s in step)
    assert "| c |" in (out / "table.md").read_text()
