"""The shipped reference-routing workflows run headless on the stand-ins of their family (picked
by ``--tiny`` from the graph): FLUX.2 [dev], FLUX.2 [klein] (ComfyUI 0.33+), Qwen-Image-Edit
(its pictures through TextEncodeQwenImageEditPlus on the tiny Qwen2.5-VL), Kontext on FLUX.1;
the A/B workflow saves an unrouted and a routed image of the same noise; the regions workflow
routes exactly its layout's regions. Runs also go through ``python -m musar_run`` itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from musar_run import convert, edits, runtime

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = {name: ROOT / "workflows" / f"{name}.json" for name in (
    "musar_flux2_references", "musar_flux2_references_ab", "musar_kontext_references", "musar_regions",
    "musar_qwen_edit_references", "musar_klein_references")}
FLUX2 = "FLUX.2 tiny (128 wide, 2+2 blocks)"
STANDIN_OF = {"musar_qwen_edit_references": "Qwen-Image-Edit tiny (64 wide, 2 blocks, Qwen2.5-VL text)",
              "musar_klein_references": "FLUX.2 [klein] tiny (128 wide, 2+2 blocks, Qwen3 text)",
              "musar_flux2_references": FLUX2, "musar_flux2_references_ab": FLUX2}
CAPTIONS = {"musar_qwen_edit_references": 3}


def needs_klein(name):
    import comfy.text_encoders.flux

    if "klein" in name and not hasattr(comfy.text_encoders.flux, "KleinTokenizer"):
        pytest.skip("this ComfyUI has no FLUX.2 [klein] (added after 0.3.75)")


@pytest.fixture(scope="module")
def info(pack):
    return convert.object_info_in_process()


def tiny_prompt(name, info, steps=3):
    prompt = convert.ui_to_api(json.loads(WORKFLOWS[name].read_text()), info)
    prompt = edits.substitute_standins(prompt, info, edits.STANDINS["tiny"])
    for node in prompt.values():
        if node["class_type"] in ("KSampler", "Flux2Scheduler"):
            node["inputs"]["steps"] = steps
    return prompt


def _of(prompt, kind):
    return [k for k, n in prompt.items() if n["class_type"] == kind]


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_reference_workflow_runs_on_the_standins_of_its_model_family(name, info):
    needs_klein(name)
    prompt = tiny_prompt(name, info)
    loader = prompt[_of(prompt, "MUSAR_TinyFluxLoader")[0]]
    assert loader["inputs"]["size"] == STANDIN_OF.get(name, "tiny (128 wide, 2+2 blocks)")
    result = runtime.run_prompt(prompt)
    result.raise_for_error()
    n = CAPTIONS.get(name, 2)
    preview = result.ui[_of(prompt, "MUSAR_RoutingPreview")[0]]
    assert len(preview["captions"]) == n and preview["captions"][0].startswith("a ")
    overlay, masks = result.output(_of(prompt, "MUSAR_RoutingPreview")[0])
    assert overlay.shape[1:3] == masks.shape[1:3] and masks.shape[0] == n
    routing = prompt[_of(prompt, "MUSAR_RouteReferences")[0]]["inputs"]
    # a route is recorded and drawn with dynamic routing (off by default on Route References
    # since the toy measurement) or hard regions; otherwise the preview shows the image alone
    assert bool(masks.sum() > 0) == (routing["dynamic_routing"] or name == "musar_regions")
    if name == "musar_regions":  # the layout's regions: red (reference 1) left, blue right
        h, w = masks.shape[1:]
        assert masks[0][h // 3:h * 8 // 10, w // 10:w * 4 // 10].all()
        assert masks[1][h // 2:h * 8 // 10, w * 6 // 10:w * 9 // 10].all()


def test_ab_workflow_samples_one_noise_unrouted_and_routed(info):
    prompt = tiny_prompt("musar_flux2_references_ab", info)
    samplers = _of(prompt, "SamplerCustomAdvanced")
    assert len(samplers) == 2 and len(_of(prompt, "RandomNoise")) == 1
    model_of = {prompt[prompt[prompt[s]["inputs"]["guider"][0]]["inputs"]["model"][0]]["class_type"]: s
                for s in samplers}
    assert set(model_of) == {"MUSAR_TinyFluxLoader", "MUSAR_RouteReferences"}
    result = runtime.run_prompt(prompt)
    result.raise_for_error()
    unrouted = result.output(model_of["MUSAR_TinyFluxLoader"])[0]["samples"]
    routed = result.output(model_of["MUSAR_RouteReferences"])[0]["samples"]
    assert unrouted.shape == routed.shape and not torch.equal(unrouted, routed)


@pytest.mark.parametrize("name,steps", [("musar_flux2_references", "Flux2Scheduler.steps=2"),
                                        ("musar_qwen_edit_references", "KSampler.steps=2"),
                                        ("musar_klein_references", "Flux2Scheduler.steps=2")])
def test_musar_run_cli_runs_the_reference_workflows_on_the_standins(tmp_path, name, steps):
    needs_klein(name)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    args = [sys.executable, "-m", "musar_run", str(WORKFLOWS[name]), "--tiny",
            "--output", str(tmp_path), "--set", steps]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = tmp_path / f"{name}_00001_.png"
    overlay = tmp_path / f"{name}_routing_00001_.png"
    assert f"saved {image}" in proc.stdout and f"saved {overlay}" in proc.stdout
    assert Image.open(image).size == Image.open(overlay).size == (256, 256)  # --tiny caps the latent
