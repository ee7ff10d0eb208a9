"""The differentiable training forward (musar.flux_forward) equals ComfyUI's inference path
(stock blocks + MUSAR hooks + LoRA object patches) and trains only the LoRA tensors."""

import comfy.model_management
import comfy.patcher_extension
import pytest
import torch
from einops import rearrange
from musar_helpers import make_subjects, pack_module, random_dual_lora, routed


def comfy_call(patched, x, sigma, context, y, guidance):
    comfy.model_management.load_models_gpu([patched])
    to = comfy.patcher_extension.copy_nested_dicts(patched.model_options["transformer_options"])
    comfy.patcher_extension.merge_nested_dicts(to.setdefault("wrappers", {}), patched.wrappers, copy_dict1=False)
    to["sigmas"] = sigma
    to["cond_or_uncond"] = [0]
    return patched.model.diffusion_model(x, sigma, context, y=y, guidance=guidance, transformer_options=to)


def _inputs(pack, model, subjects, b=2, seed=0):
    ff = pack_module(pack, "musar.flux_forward")
    layout_mod = pack_module(pack, "musar.layout")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 16, 16, 16, generator=g)
    context = torch.randn(b, 7, 64, generator=g)
    y = torch.randn(b, 32, generator=g)
    sigma = torch.rand(b, generator=g)
    guidance = torch.full((b,), 3.5)
    tokens, grid = layout_mod.pack_latent(x)
    ids = layout_mod.grid_ids(*grid).expand(b, -1, -1)
    proc = model.model.process_latent_in
    subj_tokens = torch.cat([s.packed(proc) for s in subjects.subjects], 1)
    subj_ids = torch.cat(layout_mod.subject_ids([s.grid for s in subjects.subjects]))
    inp = ff.ForwardInputs(tokens, ids, context, [s.caption_tokens for s in subjects.subjects],
                           subj_tokens, subj_ids, sigma, y, guidance)
    layout = layout_mod.TokenLayout(7, tokens.shape[1], tuple(s.caption_tokens.shape[1] for s in subjects.subjects),
                                    tuple(s.n_tokens for s in subjects.subjects))
    return inp, layout, (x, sigma, context, y, guidance)


@pytest.mark.parametrize("with_lora", [False, True])
def test_training_forward_equals_the_comfyui_inference_path(pack, tiny_flux, with_lora):
    ff = pack_module(pack, "musar.flux_forward")
    patcher = pack_module(pack, "nodes.patcher")
    model = tiny_flux(seed=11)
    subjects = make_subjects(pack, ((8, 8), (6, 10)), (3, 4))
    params, dual = random_dual_lora(pack, model, scale=0.3)
    base = patcher.apply_lora(model, dual, 0.7, 1.3) if with_lora else model
    patched, _ = routed(pack, base, subjects, dynamic=False)
    inp, layout, args = _inputs(pack, model, subjects)
    with torch.no_grad():
        want = comfy_call(patched, *args)
        comfy.model_management.load_models_gpu([model])  # training runs on the plain model
        got = ff.musar_forward(model.model.diffusion_model, inp, layout,
                               lora=dual.modules if with_lora else {}, s_noisy=0.7, s_subject=1.3)
    got = rearrange(got, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=8, w=8, ph=2, pw=2)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_gradients_reach_only_the_lora_tensors(pack, tiny_flux):
    ff = pack_module(pack, "musar.flux_forward")
    lora = pack_module(pack, "musar.lora")
    model = tiny_flux(seed=12)
    dm = model.model.diffusion_model
    subjects = make_subjects(pack)
    params, _ = random_dual_lora(pack, model, scale=0.3)
    dm.requires_grad_(False)
    inp, layout, _ = _inputs(pack, model, subjects, b=1)
    with torch.inference_mode(False), torch.enable_grad():
        for checkpointing in (False, True):
            for p in params.values():
                p.grad = None
            out = ff.musar_forward(dm, inp, layout, lora=lora.from_trainable_live(params).modules,
                                   gradient_checkpointing=checkpointing)
            out.pow(2).mean().backward()
            # the last block's linear2 output on condition tokens is discarded: no signal there
            dead = {k for k in params if k.startswith("single_blocks.1.linear2.subject")}
            assert all(params[k].grad.abs().sum() > 0 for k in params if k not in dead)
            assert all(params[k].grad.abs().sum() == 0 for k in dead)
    assert all(p.grad is None for p in dm.parameters())


def _stock_vec(model, x, sigma, context, y, guidance):
    """The modulation vector ComfyUI's own forward_orig builds, captured at the first block."""
    seen = []

    def block(args, extra):
        seen.append(args["vec"].clone())
        return extra["original_block"](args)

    m = model.clone()
    m.set_model_patch_replace(block, "dit", "double_block", 0)
    with torch.no_grad():
        comfy_call(m, x, sigma, context, y, guidance)
    return seen[0]


@pytest.mark.parametrize("vec_dim", [32, None])
def test_flux_math_is_comfyuis_own(pack, tiny_flux, vec_dim):
    """One modulation vector for inference and training: musar's timestep embedding equals
    ComfyUI's, the vector equals the one ComfyUI's forward builds, and the clean-condition vector
    is that vector at timestep 0 / guidance 1 (also for models without vector_in or pooled text)."""
    from comfy.ldm.flux.layers import timestep_embedding

    ff = pack_module(pack, "musar.flux_forward")
    t = torch.rand(6, generator=torch.Generator().manual_seed(1)) * 1.2
    assert torch.equal(ff.timestep_embedding(t), timestep_embedding(t, 256))
    model = tiny_flux(seed=13, vec_dim=vec_dim)
    dm = model.model.diffusion_model
    _, _, (x, sigma, context, y, guidance) = _inputs(pack, model, make_subjects(pack))
    y = None if vec_dim is None else y
    with torch.no_grad():
        mine = ff.modulation_vector(dm, sigma, guidance, y, torch.float32)
        clean = ff.clean_vector(dm, None, True, 2, x.device, torch.float32)
        clean_comfy = ff.clean_vector(dm, None, True, 2, x.device, torch.float32, embed=timestep_embedding)
    torch.testing.assert_close(mine, _stock_vec(model, x, sigma, context, y, guidance), rtol=0, atol=1e-6)
    zero = torch.zeros(2)
    stock_clean = _stock_vec(model, x, zero, context, None, zero + 1)
    torch.testing.assert_close(clean, stock_clean, rtol=0, atol=1e-6)
    assert torch.equal(clean, clean_comfy)
