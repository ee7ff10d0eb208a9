"""Tier 2: the real ComfyUI runtime, in process, with the pack loaded by ComfyUI itself.

ComfyUI is bootstrapped once per session (CPU, a temporary base directory for models / inputs
/ outputs) when pytest configures this tier - not at import, so a run that mixes tiers is stopped
by tests/conftest.py before ComfyUI is on sys.path - then the pack is loaded through
``nodes.load_custom_node`` exactly as the server does. Tests reach pack internals through the loaded module (``pack.musar``, ``pack.nodes``)
so class identities match what ComfyUI executes.
"""

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.append(str(ROOT))  # appended: ComfyUI's own nodes.py must win over our nodes/
sys.path.append(str(Path(__file__).resolve().parent))

from musar_run import runtime  # noqa: E402

_STATE: dict = {}


def pytest_configure(config):
    """Before this tier's modules are collected (they import ComfyUI at the top)."""
    if "pack" not in _STATE:
        _STATE["base_dir"] = Path(tempfile.mkdtemp(prefix="musar-comfy-base-"))
        runtime.bootstrap(base_dir=_STATE["base_dir"])
        _STATE["pack"] = runtime.load_pack(ROOT)


def pytest_sessionfinish(session, exitstatus):
    if "base_dir" in _STATE:
        shutil.rmtree(_STATE["base_dir"], ignore_errors=True)


@pytest.fixture(scope="session")
def pack():
    return _STATE["pack"]


@pytest.fixture(scope="session")
def musar(pack):
    """The pack's ``musar`` core package as ComfyUI loaded it."""
    return pack.musar


@pytest.fixture(scope="session")
def standins(pack):
    import importlib

    return importlib.import_module(pack.__name__ + ".nodes.testing.standins")


@pytest.fixture(scope="session")
def base_dir():
    return _STATE["base_dir"]


@pytest.fixture(scope="session")
def tiny_flux(standins):
    """Factory: a FLUX ModelPatcher built through real ComfyUI classes with seeded weights."""

    def build(hidden=128, heads=4, depth=2, single_depth=2, seed=0, **kw):
        cfg = standins.flux_unet_config(hidden, heads, depth, single_depth, **kw)
        return standins.build_flux(cfg, seed=seed)

    return build


@pytest.fixture(scope="session")
def tiny_clip(standins):
    return standins.build_clip(0)


@pytest.fixture(scope="session")
def tiny_vae(standins):
    return standins.build_vae(0)


@pytest.fixture
def run_prompt():
    return runtime.run_prompt


@pytest.fixture(scope="module")
def module_executor():
    """run_prompt with one PromptExecutor for the test module: nodes whose inputs did not change
    (the stand-in loader, encoded subjects) come from its cache instead of running again."""
    executor = runtime.new_executor()
    return lambda prompt: runtime.run_prompt(prompt, executor=executor)


@pytest.fixture
def validate_prompt():
    return runtime.validate
