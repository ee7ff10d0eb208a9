"""Seam guards: musar/ never imports ComfyUI, and tier 1 really runs without ComfyUI."""

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths",
                 "nodes", "server", "node_helpers", "execution", "latent_preview"}


def _imported_roots(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def test_musar_core_never_imports_comfyui():
    offenders = [f"{p.relative_to(ROOT)}:{line} imports {mod}"
                 for p in sorted((ROOT / "musar").rglob("*.py"))
                 for line, mod in _imported_roots(p) if mod in COMFY_MODULES]
    assert not offenders, "musar/ must stay pure torch:\n" + "\n".join(offenders)


def test_musar_core_uses_only_relative_imports_of_itself():
    offenders = [f"{p.relative_to(ROOT)}:{line}"
                 for p in sorted((ROOT / "musar").rglob("*.py"))
                 for line, mod in _imported_roots(p) if mod == "musar"]
    assert not offenders, "ComfyUI loads the pack under a path-derived name; use relative imports"


def test_guard_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom comfy import model_management\n")
    assert (2, "comfy") in list(_imported_roots(bad))


def test_tier1_runs_without_comfyui_on_the_path():
    assert importlib.util.find_spec("comfy") is None
    assert importlib.util.find_spec("folder_paths") is None


def test_pytest_from_the_repository_root_stops_with_the_tier_commands():
    """`pytest` at the root (testpaths: all three tiers) would load ComfyUI next to tier 1: it
    stops before collecting anything and names the commands that run the tiers."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest", "-q"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "make test" in done.stdout + done.stderr and "python -m pytest tests/core" in done.stdout + done.stderr
    assert "collected" not in done.stdout
