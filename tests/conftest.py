"""Shared by every tier (imports only pytest and torch, so tier 1 stays ComfyUI-free).

The tiers run in separate processes: tier 1 (tests/core) proves it runs without ComfyUI, tier 2
(tests/comfy) loads ComfyUI into the process. A pytest run that would collect more than one tier
(``pytest`` from the repository root, ``pytest tests``) stops here with the commands to use.
"""

from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
TIERS = ("core", "comfy", "adversarial", "browser")
ONE_TIER_AT_A_TIME = (
    "ComfyUI-MUSAR's test tiers run in separate processes (tier 1 must prove it runs without "
    "ComfyUI; tier 2 loads ComfyUI into the process). Run them all with `make test`, or one "
    "tier: `python -m pytest tests/core` (pure torch), `python -m pytest tests/comfy` (real "
    "ComfyUI), `python -m pytest tests/adversarial` (a real ComfyUI server under bad input), "
    "`python -m pytest tests/browser` (real frontend).")


def tiers_of(paths, cwd) -> set[str]:
    """The tiers a run over ``paths`` (pytest arguments, relative to ``cwd``) would collect."""
    found = set()
    for arg in paths:
        path = (Path(cwd) / str(arg).split("::")[0]).resolve()
        for tier in TIERS:
            folder = TESTS / tier
            if path == folder or folder in path.parents or path in folder.parents:
                found.add(tier)
    return found


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if len(tiers_of(config.args, config.invocation_params.dir)) > 1:
        pytest.exit(ONE_TIER_AT_A_TIME, returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny ops, where thread hand-offs cost more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
