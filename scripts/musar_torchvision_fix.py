"""Lets PyPI's CUDA torchvision import beside the CPU torch wheel (dev/CI runtime only).

torchvision's Python code registers fake kernels for ``torchvision::nms`` / ``qnms`` at import
time; the CPU torch wheel has no schema for them, so ``import torchvision`` dies with
"operator torchvision::nms does not exist". This import hook defines the two schemas right
before torchvision is first imported. Installed by scripts/setup.sh as a .pth file; costs
nothing for processes that never import torchvision. Not part of the pack.
"""

import importlib.abc
import sys

_LIBRARIES = []  # keep the torch.library.Library objects alive for the process lifetime


class _TorchvisionSchemaFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            import torch

            lib = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                try:
                    lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                except RuntimeError:
                    pass  # already defined (a working torchvision build)
            _LIBRARIES.append(lib)
        except Exception:  # never break interpreter start-up
            pass
        return None


def install():
    if not any(isinstance(f, _TorchvisionSchemaFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionSchemaFinder())
