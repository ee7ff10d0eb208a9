"""web/ without a browser: what ComfyUI will load from it, and that it agrees with the Python side.

ComfyUI serves web/ at /extensions/ComfyUI-MUSAR/ and the frontend imports every .js file in it
as an extension module, so web/ may hold only the extension's own modules and its help pages.
"""

from __future__ import annotations

import ast
import importlib.util
import posixpath
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import serverutil

WEB = serverutil.ROOT / "web"
BASE_URL = f"/extensions/{serverutil.PACK_NAME}/"
TRAINING_NODE_IDS = ["MUSAR_LoadDiptychDataset", "MUSAR_TrainDualLoRA", "MUSAR_SaveDualLoRA"]
# Frontend modules that are public API for extensions (the others log "internal module" warnings).
PUBLIC_FRONTEND_MODULES = {"/scripts/app.js", "/scripts/api.js"}
IMPORT = re.compile(r"""(?:^|\n)\s*import\s[^;]*?from\s*["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)""")
SCRIPTS = sorted(WEB.rglob("*.js"))


def frontend_static() -> Path | None:
    spec = importlib.util.find_spec("comfyui_frontend_package")
    return Path(spec.origin).parent / "static" if spec and spec.origin else None


def test_web_holds_only_extension_modules_and_help_pages():
    unexpected = [p.relative_to(WEB).as_posix() for p in WEB.rglob("*")
                  if p.is_file() and p.suffix not in (".js", ".md", ".css")]
    assert not unexpected, f"web/ is served and every .js in it is loaded; move these out: {unexpected}"
    bad = [p.relative_to(WEB).as_posix() for p in WEB.rglob("*")
           if "node_modules" in p.parts or re.search(r"(^|[._-])(test|spec)s?([._-]|$)", p.name)
           or p.name.endswith(".map")]
    assert not bad, f"tests, node_modules and source maps do not belong in web/: {bad}"
    assert all(p.stat().st_size < 100_000 for p in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(WEB).as_posix())
def test_every_import_resolves_to_a_served_file(script):
    url = BASE_URL + script.relative_to(WEB).as_posix()
    static = frontend_static()
    for groups in IMPORT.findall(script.read_text()):
        spec = next(g for g in groups if g)
        assert spec.startswith("."), f"{url}: import {spec!r} must be relative (no bare or absolute paths)"
        target = posixpath.normpath(posixpath.join(posixpath.dirname(url), spec))
        if target.startswith(BASE_URL):
            assert (WEB / target[len(BASE_URL):]).is_file(), f"{url}: {spec!r} -> {target} not in web/"
        else:
            assert target in PUBLIC_FRONTEND_MODULES, f"{url}: {spec!r} -> {target} is not a public frontend module"
            if static is not None:
                assert (static / target.lstrip("/")).is_file(), f"{url}: {target} not in the frontend"


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed (the browser test still parses them)")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(WEB).as_posix())
def test_every_script_is_a_valid_es_module(script):
    proc = subprocess.run(["node", "--input-type=module", "--check"], input=script.read_text(),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_palette_matches_the_routing_overlay():
    tree = ast.parse((serverutil.ROOT / "musar" / "subjects.py").read_text())
    python = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PALETTE"
                                                          for t in node.targets))
    js_text = (WEB / "lib" / "palette.js").read_text()
    block = re.search(r"export const PALETTE = \[(.*?)\];", js_text, re.S).group(1)
    js = [tuple(float(v) for v in row.split(",")) for row in re.findall(r"\[([^\[\]]+)\]", block)]
    assert js == [tuple(map(float, rgb)) for rgb in python]


def test_every_node_has_a_help_page():
    missing = []
    for node_id in serverutil.NODE_IDS + TRAINING_NODE_IDS:
        page = WEB / "docs" / f"{node_id}.md"
        if not page.is_file() or not page.read_text().startswith("# "):
            missing.append(page.name)
    assert not missing, f"help pages (web/docs/<node_id>.md, '# Title' first) missing: {missing}"
