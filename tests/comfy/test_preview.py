"""MUSAR Routing Preview shows the route of the images it is given: one route per batch image,
the run of the sampler whose LATENT it receives when one Apply Routing feeds two samplers (and a
clear refusal when it cannot know), and a second Apply Routing on a routed MODEL is refused."""

import pytest
import torch
from musar_helpers import pack_module, routing_graph


@pytest.fixture(scope="module")
def run_prompt(module_executor):
    return module_executor


def _graph(batch=1, steps=3):
    g = routing_graph()
    g["3"]["inputs"]["batch_size"] = batch
    g["4"]["inputs"].update(steps=steps, cfg=2.0)
    g["14"] = {"class_type": "MUSAR_RoutingPreview", "inputs": {
        "routing": ["20", 1], "images": ["5", 0], "step": -1, "opacity": 0.5, "samples": ["4", 0]}}
    return g


def _expected(pack, result, latent_node, images):
    """Overlay and masks from the route the recorder holds for the run that made the latent."""
    imaging, session = pack_module(pack, "musar.images"), pack_module(pack, "musar.session")
    recorder = result.output("20")[1]
    run = recorder.find(session.fingerprint(result.output(latent_node)[0]["samples"]))
    return run, imaging.route_overlay(images, run.routes[-1][1], run.grid, len(recorder.captions), 0.5)


def test_preview_draws_each_batch_images_own_route(pack, run_prompt):
    result = run_prompt(_graph(batch=2))
    result.raise_for_error()
    images = result.output("5")[0]
    overlay, masks = result.output("14")
    run, (want_overlay, want_masks) = _expected(pack, result, "4", images)
    routes = run.routes[-1][1]
    assert routes.shape[0] == 2 and not torch.equal(routes[0], routes[1])  # the images differ
    assert masks.shape == (2 * 2, 64, 64) and overlay.shape == images.shape
    assert torch.equal(masks, want_masks) and torch.equal(overlay, want_overlay)
    assert not torch.equal(masks[:2], masks[2:])


def _two_samplers(with_latents=True):
    g = _graph()
    g["40"] = {"class_type": "KSampler", "inputs": {**g["4"]["inputs"], "seed": 2}}
    g["50"] = {"class_type": "VAEDecode", "inputs": {"samples": ["40", 0], "vae": ["1", 2]}}
    g["41"] = {"class_type": "MUSAR_RoutingPreview", "inputs": {**g["14"]["inputs"], "images": ["50", 0],
                                                                "samples": ["40", 0]}}
    if not with_latents:
        del g["14"]["inputs"]["samples"], g["41"]["inputs"]["samples"]
    return g


def test_two_samplers_from_one_apply_routing_each_preview_shows_its_own_run(pack, run_prompt):
    result = run_prompt(_two_samplers())
    result.raise_for_error()
    shown = {}
    for sampler, decoded, preview in (("4", "5", "14"), ("40", "50", "41")):
        run, (want_overlay, want_masks) = _expected(pack, result, sampler, result.output(decoded)[0])
        overlay, masks = result.output(preview)
        assert torch.equal(masks, want_masks) and torch.equal(overlay, want_overlay)
        shown[sampler] = (run, masks)
    assert shown["4"][0] is not shown["40"][0]
    assert not torch.equal(shown["4"][1], shown["40"][1])  # the two runs routed differently


def test_preview_without_the_latent_refuses_to_guess_between_two_samplers(run_prompt):
    result = run_prompt(_two_samplers(with_latents=False))
    assert not result.ok
    err = result.error
    assert err["node_id"] in ("14", "41") and err["exception_type"].endswith("RoutingError"), err
    assert "fed 2 samplers (nodes 4, 40)" in err["exception_message"] and "'samples'" in err["exception_message"]


def test_a_latent_from_another_model_is_refused(run_prompt):
    g = _graph()
    g["60"] = {"class_type": "KSampler", "inputs": {**g["4"]["inputs"], "model": ["1", 0]}}  # unrouted
    g["14"]["inputs"]["samples"] = ["60", 0]
    result = run_prompt(g)
    assert not result.ok and result.error["node_id"] == "14"
    assert "was not made by a sampler with this MUSAR Apply Routing" in result.error["exception_message"]


def test_a_second_apply_routing_on_a_routed_model_is_refused(run_prompt):
    g = _graph()
    g["21"] = {"class_type": "MUSAR_ApplyRouting", "inputs": {**g["20"]["inputs"], "model": ["20", 0],
                                                              "subjects": ["100", 0]}}
    g["4"]["inputs"]["model"] = ["21", 0]
    result = run_prompt(g)
    assert not result.ok
    err = result.error
    assert err["node_id"] == "21" and err["exception_type"].endswith("RoutingError"), err
    assert "already went through MUSAR Apply Routing" in err["exception_message"]
    assert "chain every MUSAR Subject into one Apply Routing" in err["exception_message"]
    executed = [d for e, d in result.messages if e == "execution_error"][0]["executed"]
    assert "4" not in executed


def test_with_dynamic_routing_off_the_preview_shows_the_image_and_says_why_at_info_level(run_prompt, caplog):
    g = _graph()
    g["20"]["inputs"]["dynamic_routing"] = False
    with caplog.at_level("INFO"):
        result = run_prompt(g)
    result.raise_for_error()
    overlay, masks = result.output("14")
    assert torch.equal(overlay, result.output("5")[0]) and not masks.any()
    said = [r for r in caplog.records if "MUSAR preview" in r.getMessage()]
    assert [r.levelname for r in said] == ["INFO"] and "dynamic routing is off" in said[0].getMessage()
    assert result.output("20")[1].routes is False
