"""The adversarial tier: a real ComfyUI server with the pack, attacked the way a careless user or
someone on the network would (SECURITY.md has the threat model).

One server for the whole tier (``--base-directory`` a fresh folder, default caching, so cached
loader outputs are shared between the bad prompts and the good ones). The base folder holds a
good tiny dual LoRA and malformed ones in ``models/loras/adv/``, training data in
``models/musar_datasets/``, and - outside every ComfyUI folder - a "secret" folder with a real
dataset, a real LoRA and a real checkpoint that no prompt may reach.

No ComfyUI import here (the server runs in its own process); ``musar`` (pure torch) writes the
files.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT, ROOT / "tests" / "comfy", ROOT / "tests" / "adversarial"):  # musar, serverutil
    if str(extra) not in sys.path:
        sys.path.append(str(extra))

# Tiny models: one torch thread per process (thread hand-offs cost more than they give, and on
# a busy machine they cost ten times more); the server and the CLI processes inherit it.
os.environ["OMP_NUM_THREADS"] = "1"

import cli_cases  # noqa: E402
import serverutil  # noqa: E402
from client import Client  # noqa: E402
from files import tiny_lora  # noqa: E402
from graphs import good_images  # noqa: E402
from musar_helpers import make_pairs  # noqa: E402

from musar import lora as musar_lora  # noqa: E402


@pytest.fixture(scope="session")
def world():
    """Paths of the base folder and of the secret folder outside it (removed afterwards)."""
    top = Path(tempfile.mkdtemp(prefix="musar-adversarial-"))
    base, secret = serverutil.make_base_dir(top / "base"), top / "secret"
    loras, data = base / "models" / "loras" / "adv", base / "models" / "musar_datasets"
    for folder in (loras, data, secret, base / "input"):
        folder.mkdir(parents=True, exist_ok=True)
    musar_lora.save_dual_lora(loras / "good.safetensors", tiny_lora())
    musar_lora.save_dual_lora(secret / "stolen.safetensors", tiny_lora(seed=3))
    make_pairs(data / "pairs")
    make_pairs(secret / "private_pairs")
    (data / "escape").symlink_to(secret / "private_pairs", target_is_directory=True)
    yield {"top": top, "base": base, "secret": secret, "loras": loras, "data": data}
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def cli_processes():
    return cli_cases.start()


@pytest.fixture(scope="session")
def cli_results(cli_processes):
    return cli_cases.finish(cli_processes)


@pytest.fixture(scope="session")
def server(world, request):
    if any("test_cli" in item.nodeid for item in request.session.items):
        request.getfixturevalue("cli_processes")  # they run while the server cases do
    with serverutil.running_server(world["base"]) as running:
        yield running
        assert running.proc.poll() is None, "the server died"
        assert not running.pack_import_failures()


@pytest.fixture(scope="session")
def client(server):
    return Client(server)


@pytest.fixture(scope="session")
def solo(client):
    """The good prompt's images (two seeds) on the fresh server, before any bad input."""
    return {seed: good_images(client, seed) for seed in (1, 2)}


def pytest_collection_modifyitems(items):
    """The CLI cases run last: their subprocesses start with the tier and finish meanwhile."""
    items.sort(key=lambda item: "test_cli" in item.nodeid)
