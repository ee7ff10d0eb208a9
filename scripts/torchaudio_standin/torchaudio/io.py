"""torchaudio.io of MUSAR's torchaudio stand-in (see the package docstring)."""

from . import _Missing


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(f"io.{name}")
