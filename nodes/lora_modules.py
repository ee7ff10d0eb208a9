"""Dual-branch LoRA as object patches of ComfyUI's own linear modules.

``wrap(base, ...)`` returns a shallow twin of ``base`` whose class is a dynamic subclass of
``type(base)`` (comfy.ops Linear, fp8 / GGUF ops included) with a ``forward`` that runs the
stock forward and then adds the branch deltas on their tokens. The twin holds the very same
Parameter objects under the same names, so ComfyUI's weight patching, casting and lowvram logic
treat it exactly like the original; the original module object is never modified. Several
MUSAR LoRAs stack: wrapping a twin appends a branch set.
"""

from __future__ import annotations

import copy

import torch

from ..musar import session
from ..musar.layout import SUBJECT
from ..musar.lora import apply_dual, modulation_classes, module_role

_CLASSES: dict[type, type] = {}


def _forward(self, x, *args, **kwargs):
    out = self._musar_base_cls.forward(self, x, *args, **kwargs)
    call = session.ACTIVE.get()
    for role, noisy, subject, s_noisy, s_subject in self._musar_branches:
        classes = _classes(role, call, x)
        if classes is False:
            continue
        dim = 1 if role == "mod" else -2
        out = apply_dual(x, out, classes, noisy, subject, s_noisy, s_subject, dim)
    return out


def _classes(role: str, call, x: torch.Tensor):
    """Token classes for this module call; None = all tokens noisy; False = no LoRA at all.
    Object patches stay applied while ComfyUI keeps the model loaded, so outside a call of the
    patched MODEL (no active MusarCall) the wrapper must be inert."""
    if call is None:  # not inside a MUSAR-wrapped diffusion-model call (e.g. training forward)
        return False
    if role == "mod":  # stacked [sampling, clean-condition] rows only inside MUSAR's block patch
        return modulation_classes(x) if call.paired else None
    if role == "img_in":
        if call.img_in_mode == "subject":
            return torch.full((x.shape[-2],), SUBJECT, dtype=torch.int8)
        return None
    n = x.shape[-2]
    layout = call.layout
    stream = "img" if role == "img" else "joint"
    if n == (layout.img_len if role == "img" else layout.total):
        return call.token_classes(stream)
    short = layout.without_conditions()  # condition-cache steps run without condition tokens
    if n == (short.img_len if role == "img" else short.total):
        return short.token_classes(stream)
    raise RuntimeError(f"MUSAR LoRA: {n} tokens reached a {role} module but the layout has "
                       f"{layout.img_len} image / {layout.total} joint tokens")


def wrap(base: torch.nn.Module, name: str, noisy, subject, s_noisy: float, s_subject: float):
    entry = (module_role(name), noisy, subject, float(s_noisy), float(s_subject))
    twin = copy.copy(base)
    twin._parameters = dict(base._parameters)
    twin._buffers = dict(base._buffers)
    twin._modules = dict(base._modules)
    if getattr(base, "_musar_branches", None) is not None:
        twin.__dict__["_musar_branches"] = base._musar_branches + (entry,)
        return twin
    cls = type(base)
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"MusarDualLoRA{cls.__name__}", (cls,),
                             {"forward": _forward, "_musar_base_cls": cls})
    twin.__class__ = _CLASSES[cls]
    twin.__dict__["_musar_branches"] = (entry,)
    return twin
