"""The headless runner: stand-in substitution and overrides in process, the CLI as a subprocess
(run from the repository root, as the docs say: ComfyUI's nodes.py must still win over nodes/)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from musar_run import cli, convert, edits

ROOT = Path(__file__).resolve().parents[2]
TWO = ROOT / "workflows" / "musar_two_subjects.json"
LOADERS = {"UNETLoader", "DualCLIPLoader", "VAELoader", "MUSAR_LoadDualLoRA"}


@pytest.fixture(scope="module")
def info(pack):
    return convert.object_info_in_process()


@pytest.fixture(scope="module")
def two(info):
    return convert.ui_to_api(json.loads(TWO.read_text()), info)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, two):
    """The CLI runs start at once (each pays ComfyUI's start-up); results are read by the tests."""
    tmp = tmp_path_factory.mktemp("runner")
    (tmp / "empty_models" / "loras").mkdir(parents=True)
    failing = json.loads(json.dumps(two))  # subject 1's caption linked from a String node: "" passes
    failing["99"] = {"class_type": "PrimitiveString", "inputs": {"value": "  "}}  # validation, fails
    failing["21"]["inputs"]["caption"] = ["99", 0]  # at execute time with a MUSAR error
    (tmp / "failing.json").write_text(json.dumps(failing))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    commands = {
        "tiny": [TWO, "--tiny", "--output", tmp / "out", "--save-api", tmp / "api.json",
                 "--set", "11.steps=2", "--set", "KSampler.seed=7",
                 "--set", "13.filename_prefix=demo_image"],
        "missing": [TWO, "--models", tmp / "empty_models", "--output", tmp / "out_missing"],
        "failing": [tmp / "failing.json", "--tiny", "--output", tmp / "out_failing"],
    }
    procs = {k: subprocess.Popen([sys.executable, "-m", "musar_run", *map(str, args)], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, args in commands.items()}
    results = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        results[key] = (proc.returncode, out, err)
    return tmp, results


def test_tiny_mode_writes_the_image_and_the_routing_overlay(cli_runs):
    tmp, results = cli_runs
    code, out, err = results["tiny"]
    assert code == 0, err[-3000:]
    image, overlay = tmp / "out" / "demo_image_00001_.png", tmp / "out" / "musar_two_subjects_routing_00001_.png"
    assert f"saved {image}" in out and f"saved {overlay}" in out
    assert Image.open(image).size == Image.open(overlay).size == (256, 256)  # --tiny caps the latent
    assert "time:" in out and "KSampler (#11)" in err  # timings and node-level progress


def test_set_overrides_reach_the_executed_prompt(cli_runs):
    tmp, _ = cli_runs
    prompt = json.loads((tmp / "api.json").read_text())
    assert prompt["11"]["inputs"]["steps"] == 2 and prompt["11"]["inputs"]["seed"] == 7
    assert prompt["13"]["inputs"]["filename_prefix"] == "demo_image"


def test_missing_model_file_names_the_file_and_folder_and_exits_non_zero(cli_runs):
    _, results = cli_runs
    code, _, err = results["missing"]
    assert code == cli.EXIT_INVALID, err[-3000:]
    assert "model file 'musar_dual_lora.safetensors' is not in the 'loras' folder" in err
    assert "--lora" in err and "Traceback" not in err


def test_a_node_failing_with_a_musar_error_is_one_clear_line_without_traceback(cli_runs):
    _, results = cli_runs
    code, _, err = results["failing"]
    assert code == cli.EXIT_FAILED, err[-3000:]
    assert "node 21 " in err and "LayoutError" in err and "the subject caption is empty" in err, err[-3000:]
    assert "Traceback" not in err and "!!! Exception during processing" not in err, err[-3000:]


def test_standins_replace_only_the_loaders(two, info):
    tiny = edits.substitute_standins(two, info, edits.STANDINS["tiny"])
    added = set(tiny) - set(two)
    assert len(added) == 1
    new = added.pop()
    assert tiny[new]["class_type"] == "MUSAR_TinyFluxLoader"
    assert set(two) - set(tiny) == {k for k, n in two.items() if n["class_type"] in LOADERS}
    assert tiny["10"]["inputs"]["model"] == [new, 0]  # through the removed dual LoRA
    assert tiny["21"]["inputs"]["vae"] == [new, 2] and tiny["21"]["inputs"]["clip"] == [new, 1]
    assert tiny["9"]["inputs"]["width"] == 256 and tiny["21"]["inputs"]["reference_size"] == 128
    for key in set(two) & set(tiny):  # everything else is untouched
        if key not in ("9", "21", "23"):
            rewired = {k: v for k, v in two[key]["inputs"].items() if not isinstance(v, list)}
            assert {k: v for k, v in tiny[key]["inputs"].items() if not isinstance(v, list)} == rewired


def test_overrides_are_typed_by_the_input_definition(two, info):
    edited = edits.apply_overrides(two, info, ["11.seed=7", "6.text=42", "KSampler.cfg=2.5",
                                             "MUSAR Apply Routing.symmetric=yes"])
    assert edited["11"]["inputs"]["seed"] == 7 and edited["11"]["inputs"]["cfg"] == 2.5
    assert edited["6"]["inputs"]["text"] == "42"
    assert edited["10"]["inputs"]["symmetric"] is True
    assert two["11"]["inputs"]["seed"] == 42  # the input prompt is not modified
    for bad, message in [("11.seeds=1", "has no input 'seeds'"), ("11.seed=x", "expected a int"),
                         ("11.model=1", "MODEL connection"), ("99.seed=1", "not a node id"),
                         ("SaveImage.filename_prefix=a", "matches several nodes"), ("11seed=1", "NODE.INPUT")]:
        with pytest.raises(edits.UsageError, match=message):
            edits.apply_overrides(two, info, [bad])


def test_model_file_flags_symlink_the_files_and_select_them(two, tmp_path):
    unet = tmp_path / "weights" / "my-flux-fp8.safetensors"
    unet.parent.mkdir()
    unet.write_bytes(b"x")
    prompt = json.loads(json.dumps(two))
    folders = edits.set_model_files(prompt, {"unet": unet}, tmp_path / "models")
    link = tmp_path / "models" / "diffusion_models" / unet.name
    assert folders == {"diffusion_models": link.parent}
    assert link.is_symlink() and link.resolve() == unet.resolve()
    assert prompt["2"]["inputs"]["unet_name"] == unet.name
    with pytest.raises(edits.UsageError, match="no such file"):
        edits.set_model_files(prompt, {"vae": tmp_path / "nope.safetensors"}, tmp_path / "models")
