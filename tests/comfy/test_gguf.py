"""GGUF-quantised FLUX weights, dequantised on the fly inside each layer's forward, under MUSAR.

GGUF loaders for ComfyUI (ComfyUI-GGUF's UnetLoaderGGUF) keep the quantised blocks in the model
and dequantise them in every linear layer's forward, through ComfyUI's custom-operations hook.
ComfyUI-GGUF is not on the package registry, so this module brings its own loader of that kind:
the tiny FLUX is written to a real .gguf file with the registry's ``gguf`` package (Q8_0 and
Q4_0 blocks), read back with ``gguf.GGUFReader``, and built through ComfyUI's model classes with
``custom_operations`` whose Linear dequantises in ``forward_comfy_cast_weights``. MUSAR routing
(static + dynamic) with a dual LoRA then samples through real ComfyUI and must equal the same
run on a dense model holding the dequantised weights (``gguf.quants.dequantize``).
"""

from __future__ import annotations

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.supported_models
import numpy as np
import pytest
import torch
from musar_helpers import make_subjects, pack_module, random_dual_lora, routed, sample

gguf = pytest.importorskip("gguf", reason="gguf is in requirements-dev.txt (scripts/setup.sh)")
Q = gguf.GGMLQuantizationType


def _quant_type(name: str, shape) -> Q | None:
    """Q4_0 for the fused attention / linear1 weights, Q8_0 for the other matrices (as GGUF
    files mix types); vectors and norms stay F32."""
    if len(shape) != 2 or shape[1] % 32:
        return None
    return Q.Q4_0 if name.endswith(("qkv.weight", "linear1.weight")) else Q.Q8_0


def write_gguf(path, state_dict: dict) -> dict:
    writer = gguf.GGUFWriter(str(path), "flux")
    types = {}
    for name, tensor in sorted(state_dict.items()):
        data = tensor.float().numpy()
        qtype = _quant_type(name, data.shape)
        if qtype is None:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
            types[name] = qtype
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types


def read_gguf(path) -> tuple[dict, dict, dict]:
    """(tensors as stored: uint8 blocks or float, {name: (qtype, shape)}, dequantised reference)."""
    stored, quant, dense = {}, {}, {}
    for t in gguf.GGUFReader(str(path)).tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF lists dims innermost first
        data = np.array(t.data)
        if t.tensor_type in (Q.F32, Q.F16):
            stored[t.name] = dense[t.name] = torch.from_numpy(data.astype(np.float32).reshape(shape))
            continue
        stored[t.name] = torch.from_numpy(data)
        quant[t.name] = (t.tensor_type, shape)
        dense[t.name] = torch.from_numpy(gguf.quants.dequantize(data, t.tensor_type).reshape(shape))
    return stored, quant, dense


def dequantize(blocks: torch.Tensor, qtype: Q, shape) -> torch.Tensor:
    """Q8_0 / Q4_0 blocks (uint8) -> float32, in torch (what a GGUF loader does in forward)."""
    size, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    b = blocks.reshape(-1, nbytes)
    scale = b[:, :2].contiguous().view(torch.float16).float()
    if qtype == Q.Q8_0:
        q = b[:, 2:].contiguous().view(torch.int8).float()
    elif qtype == Q.Q4_0:
        nibbles = b[:, 2:]
        q = torch.cat([nibbles & 0x0F, nibbles >> 4], 1).float() - 8
    else:
        raise ValueError(f"no dequantisation for {qtype.name}")
    assert q.shape[1] == size
    return (scale * q).reshape(shape)


class GGUFWeight(torch.Tensor):
    """Quantised blocks (uint8) that report the dequantised shape, as GGUF loaders' tensors do:
    ComfyUI reads e.g. ``img_in.weight.shape`` to tell FLUX variants apart. Torch ops on it see
    the plain uint8 blocks."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __new__(cls, blocks, qtype, logical_shape):
        return torch.Tensor._make_subclass(cls, blocks, False)

    def __init__(self, blocks, qtype, logical_shape):
        self.qtype, self.logical_shape = qtype, torch.Size(logical_shape)

    @property
    def shape(self):
        return self.logical_shape

    def size(self, dim=None):
        return self.logical_shape if dim is None else self.logical_shape[dim]

    def blocks(self) -> torch.Tensor:
        return self.as_subclass(torch.Tensor)

    def detach(self):
        return GGUFWeight(self.blocks().detach(), self.qtype, self.logical_shape)

    def to(self, *args, **kwargs):
        moved = self.blocks().to(*args, **kwargs)
        return self if moved.data_ptr() == self.data_ptr() else GGUFWeight(moved, self.qtype, self.logical_shape)


def gguf_ops(quant: dict):
    """ComfyUI custom operations whose Linear keeps GGUF blocks and dequantises per call."""

    class GGUFOps(comfy.ops.manual_cast):
        class Linear(comfy.ops.manual_cast.Linear):
            def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected,
                                      errors):
                key = prefix + "weight"
                if key in quant and key in state_dict:
                    blocks = GGUFWeight(state_dict.pop(key), *quant[key])
                    self.weight = torch.nn.Parameter(blocks, requires_grad=False)
                    if prefix + "bias" in state_dict:
                        self.bias = torch.nn.Parameter(state_dict.pop(prefix + "bias"), requires_grad=False)
                    return
                super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing,
                                              unexpected, errors)

            def forward_comfy_cast_weights(self, input):
                if not isinstance(self.weight, GGUFWeight):
                    return super().forward_comfy_cast_weights(input)
                w = self.weight
                weight = dequantize(w.blocks().to(input.device), w.qtype, w.logical_shape).to(input.dtype)
                for patch in self.weight_function:
                    weight = patch(weight)
                bias = None if self.bias is None else self.bias.to(input)
                return torch.nn.functional.linear(input, weight, bias)

    return GGUFOps


def load_gguf_model(standins, config: dict, path) -> comfy.model_patcher.ModelPatcher:
    """What a GGUF UNet loader does: the file's tensors into ComfyUI's FLUX built with GGUF ops
    (the config completed as ComfyUI's model detection completes it)."""
    stored, quant, _ = read_gguf(path)
    cfg = comfy.supported_models.Flux(standins.detected_fields(config))
    cfg.set_inference_dtype(torch.float32, None)
    cfg.custom_operations = gguf_ops(quant)
    model = cfg.get_model({})
    model.load_model_weights(dict(stored), "")
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


@pytest.fixture(scope="module")
def models(standins, tmp_path_factory):
    config = standins.flux_unet_config()
    original = standins.build_flux(config, seed=9)
    path = tmp_path_factory.mktemp("gguf") / "tiny_flux-Q8_0-Q4_0.gguf"
    types = write_gguf(path, original.model.diffusion_model.state_dict())
    _, quant, dense = read_gguf(path)
    return {"original": original, "gguf": load_gguf_model(standins, config, path),
            "dense": standins.build_flux(config, state_dict=dense), "types": types, "quant": quant,
            "dense_sd": dense, "path": path}


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.blocks() if isinstance(t, GGUFWeight) else t


def test_the_file_holds_q8_0_and_q4_0_blocks_that_torch_dequantises_like_the_gguf_package(models):
    assert set(models["types"].values()) == {Q.Q8_0, Q.Q4_0}
    assert models["path"].read_bytes()[:4] == b"GGUF"
    for name, (qtype, shape) in models["quant"].items():
        module = models["gguf"].model.diffusion_model.get_submodule(name.rsplit(".", 1)[0])
        weight = module.weight
        assert isinstance(weight, GGUFWeight) and weight.dtype == torch.uint8 and weight.qtype == qtype
        assert weight.shape == shape and weight.blocks().shape != shape  # logical vs stored
        assert torch.equal(dequantize(weight.blocks(), qtype, shape), models["dense_sd"][name]), name


def test_musar_routing_and_dual_lora_on_gguf_weights_equal_the_dequantised_dense_model(pack, models):
    patcher = pack_module(pack, "nodes.patcher")
    subjects = make_subjects(pack)
    _, dual = random_dual_lora(pack, models["dense"], seed=3)
    stored = {k: _plain(v).clone() for k, v in models["gguf"].model.diffusion_model.state_dict().items()}
    outs, recorders = {}, {}
    for kind in ("gguf", "dense", "original"):
        model, recorders[kind] = routed(pack, patcher.apply_lora(models[kind], dual, 1.0, 1.0), subjects)
        outs[kind] = sample(model, steps=4)
    assert recorders["gguf"].latest.routes, "dynamic routing did not run"
    assert torch.allclose(outs["gguf"], outs["dense"], rtol=0, atol=1e-5), (
        (outs["gguf"] - outs["dense"]).abs().max())
    # The quantisation is real: the original float weights give a measurably different image.
    assert (outs["original"] - outs["dense"]).abs().max() > 1e3 * (outs["gguf"] - outs["dense"]).abs().max()
    after = models["gguf"].model.diffusion_model.state_dict()
    assert all(torch.equal(_plain(after[k]), v) for k, v in stored.items()), "the GGUF model was changed"
    assert isinstance(after["double_blocks.0.img_attn.qkv.weight"], GGUFWeight)  # still quantised
