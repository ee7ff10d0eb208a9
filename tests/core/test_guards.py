"""Seam guards: musar/ never imports ComfyUI, every package imports only what
docs/ARCHITECTURE.md's "may import" table lists (the table is the guard's input), and tier 1
really runs without ComfyUI."""

import ast
import importlib.util
import re
import sys
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


ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def documented_imports() -> dict[str, set[str]]:
    """{package: allowed roots} from the may-import table of docs/ARCHITECTURE.md."""
    text = ARCHITECTURE.read_text()
    table = text.split("<!-- may-import table")[1].split("<!-- end may-import table -->")[0]
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`") and cells[0] != "`package`":
            out[cells[0].strip("`")] = set(re.findall(r"`([^`]+)`", cells[1]))
    return out


def _roots(path: Path, root: Path):
    """Roots a file imports: absolute as named, relative as ``.<package>`` of the pack."""
    parts = list(path.relative_to(root).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = parts[:len(parts) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            yield "." + (target[0] if target else node.names[0].name)


def actual_imports(package: str, root: Path = ROOT) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((root / package).rglob("*.py")):
        if "results" in path.parts:
            continue
        for imported in _roots(path, root):
            if imported not in STDLIB:
                found.setdefault(imported, []).append(str(path.relative_to(root)))
    return found


def test_every_package_imports_only_what_the_architecture_table_lists():
    table = documented_imports()
    assert set(table) == {"musar", "nodes", "musar_run", "musar_train", "toyworld", "bench", "scripts"}
    for package, allowed in table.items():
        found = actual_imports(package)
        extra = {root: files[:3] for root, files in found.items() if root not in allowed}
        assert not extra, f"{package}/ imports what docs/ARCHITECTURE.md does not list: {extra}"
        unused = allowed - set(found)
        assert not unused, f"docs/ARCHITECTURE.md lists for {package}/ what it never imports: {unused}"


def test_the_table_guard_sees_a_violation(tmp_path):
    # The probe goes into a copy's tree, never the checkout: CI runs two suites on one checkout.
    bad = tmp_path / "musar" / "sub" / "_guard_probe.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("import comfy\nfrom ...nodes import patcher\n")
    found = actual_imports("musar", root=tmp_path)
    assert found == {"comfy": ["musar/sub/_guard_probe.py"], ".nodes": ["musar/sub/_guard_probe.py"]}
    assert not {"comfy", ".nodes"} <= documented_imports()["musar"]
