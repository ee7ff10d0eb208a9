"""Stand-in for torchaudio in MUSAR's development venvs (scripts/setup.sh); not part of the pack.

ComfyUI 0.2x and newer import torchaudio when they start (comfy/sd.py imports an audio VAE).
The package registry has no torchaudio build that loads beside the CPU torch 2.13 wheel of
our machines, and no FLUX, Kontext, FLUX.2 or Qwen-Image path uses it. This package makes the
import succeed; any audio function or class, when used, raises an ImportError that says why.
"""

__version__ = "0.0.0+musar.standin"
STANDIN = True


class _Missing:
    """Any torchaudio attribute: fails when called or instantiated, with the reason."""

    def __init__(self, name: str):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise ImportError(f"torchaudio.{self._name} is not available: this venv has MUSAR's "
                          "torchaudio stand-in (no CPU build of torchaudio exists for this "
                          "torch on the package registry); audio nodes cannot run here")

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Missing(f"{self._name}.{name}")

    def __mro_entries__(self, bases):  # `class X(torchaudio.transforms.Y)` still defines X
        return (object,)


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(name)
