"""Tier 2: the real ComfyUI runtime, in process, with the pack loaded by ComfyUI itself.

ComfyUI is bootstrapped once per session (CPU, a temporary base directory for models / inputs
/ outputs), then the pack is loaded through ``nodes.load_custom_node`` exactly as the server
does. Tests reach pack internals through the loaded module (``pack.musar``, ``pack.nodes``)
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

BASE_DIR = Path(tempfile.mkdtemp(prefix="musar-comfy-base-"))
runtime.bootstrap(base_dir=BASE_DIR)
PACK = runtime.load_pack(ROOT)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(BASE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def pack():
    return PACK


@pytest.fixture(scope="session")
def musar(pack):
    """The pack's ``musar`` core package as ComfyUI loaded it."""
    return pack.musar


@pytest.fixture(scope="session")
def standins(pack):
    import importlib

    return importlib.import_module(pack.__name__ + ".nodes.standins")


@pytest.fixture(scope="session")
def base_dir():
    return BASE_DIR


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


@pytest.fixture
def validate_prompt():
    return runtime.validate
