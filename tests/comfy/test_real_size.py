"""The full-size code path: a FLUX.1-shaped model (3072 wide, 24 heads, 1 double + 1 single
block, real key names) saved to disk, loaded by the stock UNETLoader with fp8 weights, an
OminiControl-layout subject LoRA of real shapes through MUSAR_LoadDualLoRA, and two patched
sampling steps with two subjects on CPU (the second one dynamically routed), compared with the
same run through the dense masked reference attention."""

import os

import comfy.utils
import folder_paths
import pytest
import torch
from musar_helpers import ROUTING, pack_module, use_dense_reference
from safetensors.torch import save_file

import nodes as comfy_nodes

pytestmark = pytest.mark.slow
HIDDEN, MLP = 3072, 12288


@pytest.fixture(scope="module")
def real_size_file(standins):
    config = standins.flux_unet_config(HIDDEN, 24, 1, 1, context_dim=4096, vec_dim=768)
    model = standins.build_flux(config, seed=0, dtype=torch.bfloat16)
    folder = folder_paths.get_folder_paths("diffusion_models")[0]
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "flux1-shape-1x1-bf16.safetensors")
    comfy.utils.save_torch_file(model.model.diffusion_model.state_dict(), path)
    del model
    yield os.path.basename(path)
    os.remove(path)


def _omini_real_size(name, rank=4):
    g = torch.Generator().manual_seed(0)
    t = {}

    def add(key, fan_in, fan_out):
        t[f"transformer.{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=g) * 0.01
        t[f"transformer.{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=g) * 0.01

    add("x_embedder", 64, HIDDEN)
    add("transformer_blocks.0.norm1.linear", HIDDEN, 6 * HIDDEN)
    for p in ("to_q", "to_k", "to_v"):
        add(f"transformer_blocks.0.attn.{p}", HIDDEN, HIDDEN)
        add(f"single_transformer_blocks.0.attn.{p}", HIDDEN, HIDDEN)
    add("transformer_blocks.0.attn.to_out.0", HIDDEN, HIDDEN)
    add("transformer_blocks.0.ff.net.2", MLP, HIDDEN)
    add("single_transformer_blocks.0.norm.linear", HIDDEN, 3 * HIDDEN)
    add("single_transformer_blocks.0.proj_mlp", HIDDEN, MLP)
    add("single_transformer_blocks.0.proj_out", HIDDEN + MLP, HIDDEN)
    folder = folder_paths.get_folder_paths("loras")[0]
    os.makedirs(folder, exist_ok=True)
    save_file(t, os.path.join(folder, name))
    return name


def test_real_flux_shapes_with_fp8_weights_equal_the_dense_reference(pack, real_size_file, monkeypatch):
    model = comfy_nodes.UNETLoader().load_unet(real_size_file, "fp8_e4m3fn")[0]
    dm = model.model.diffusion_model
    assert (dm.hidden_size, dm.num_heads, dm.params.axes_dim) == (HIDDEN, 24, [16, 56, 56])
    assert dm.double_blocks[0].img_attn.qkv.weight.dtype == torch.float8_e4m3fn
    lora_nodes = pack_module(pack, "nodes.lora")
    routing_nodes = pack_module(pack, "nodes.apply_routing")
    lora_name = _omini_real_size("omini-shape-1x1.safetensors")
    dual = lora_nodes.read_lora(lora_name)
    assert dual.modules["single_blocks.0.linear1"][1].up.shape == (3 * HIDDEN + MLP, 16)
    model_l = lora_nodes.MusarLoadDualLoRA.execute(model, lora_name=lora_name, strength_noisy=0.0,
                                                   strength_subject=1.0).result[0]
    subj = pack_module(pack, "musar.subjects")
    g = torch.Generator().manual_seed(1)
    subjects = subj.SubjectSet().add(subj.Subject(torch.randn(1, 16, 8, 8, generator=g), "a mug",
                                                  torch.randn(1, 4, 4096, generator=g)))
    subjects = subjects.add(subj.Subject(torch.randn(1, 16, 8, 12, generator=g), "a cat",
                                         torch.randn(1, 3, 4096, generator=g)))
    patched, recorder = routing_nodes.MusarApplyRouting.execute(
        model_l, subjects, **{**ROUTING, "start_percent": 0.0, "routing_blocks": "d0"}).result
    out = sample_real(patched)
    assert out.shape == (1, 16, 16, 16) and torch.isfinite(out).all()
    assert len(recorder.latest.routes) == 1  # step 2 ran with the route of step 1
    use_dense_reference(pack, monkeypatch)
    dense = sample_real(patched)
    torch.testing.assert_close(out, dense, rtol=1e-4, atol=1e-4)
    assert not model.object_patches and "musar_attachment" not in model.model_options["transformer_options"]


def sample_real(model):
    import comfy.sample

    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 8, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g), "guidance": 3.5}]]
    noise = torch.randn(1, 16, 16, 16, generator=g)
    return comfy.sample.sample(model, noise, 2, 1.0, "euler", "simple", pos, pos, torch.zeros_like(noise),
                               seed=0, disable_pbar=True)


