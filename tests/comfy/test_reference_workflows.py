"""The shipped reference-routing workflows run headless on the stand-ins: the FLUX.2 ones on the
FLUX.2 stand-ins (picked by ``--tiny`` from the graph), the Kontext ones on the FLUX.1 ones;
the A/B workflow saves an unrouted and a routed image of the same noise; the regions workflow
routes exactly its layout's regions. One run goes through ``python -m musar_run`` itself."""

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
    "musar_flux2_references", "musar_flux2_references_ab", "musar_kontext_references", "musar_regions")}
FLUX2 = "FLUX.2 tiny (128 wide, 2+2 blocks)"


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
    prompt = tiny_prompt(name, info)
    loader = prompt[_of(prompt, "MUSAR_TinyFluxLoader")[0]]
    assert (loader["inputs"]["size"] == FLUX2) == ("flux2" in name)
    result = runtime.run_prompt(prompt)
    result.raise_for_error()
    preview = result.ui[_of(prompt, "MUSAR_RoutingPreview")[0]]
    assert len(preview["captions"]) == 2 and preview["captions"][0].startswith("a ")
    overlay, masks = result.output(_of(prompt, "MUSAR_RoutingPreview")[0])
    assert overlay.shape[1:3] == masks.shape[1:3] and masks.shape[0] == 2
    assert masks.sum() > 0  # a route was recorded and drawn
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


def test_musar_run_cli_runs_the_flux2_workflow_on_the_standins(tmp_path):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    args = [sys.executable, "-m", "musar_run", str(WORKFLOWS["musar_flux2_references"]), "--tiny",
            "--output", str(tmp_path), "--set", "Flux2Scheduler.steps=2"]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = tmp_path / "musar_flux2_references_00001_.png"
    overlay = tmp_path / "musar_flux2_references_routing_00001_.png"
    assert f"saved {image}" in proc.stdout and f"saved {overlay}" in proc.stdout
    assert Image.open(image).size == Image.open(overlay).size == (256, 256)  # --tiny caps the latent
