"""Real-browser tier: the real ComfyUI server + the real frontend in headless Chromium.

Every frontend of FRONTENDS: ComfyUI 0.3.75's pin (1.32.9), ComfyUI 0.33.0's pin (1.49.6) and the
newest on the registry (1.58.1), as users of each run them. The one the venv's ComfyUI pins is
served as installed; the others come from git-ignored folders (``main.py --front-end-root``).
Tests that take the ``ui`` fixture run once per frontend. Chromium comes from
Debian packages and Playwright for Python drives it through ``executable_path``
(scripts/setup_browser.sh installs Chromium, Playwright and the second frontend; ``playwright
install`` is never used). One server and one browser page per test module and frontend.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "comfy"))
import serverutil  # noqa: E402

CHROMIUM = Path(os.environ.get("MUSAR_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = serverutil.ROOT / "test-artifacts" / "browser"
PACK_URL = f"/extensions/{serverutil.PACK_NAME}/"
# A user who has seen the first-run template browser (it would cover the canvas) and turned off
# the zoomed-out simplified rendering (so full-graph screenshots stay readable).
USER_SETTINGS = {"Comfy.TutorialCompleted": True, "LiteGraph.Canvas.MinFontSizeForLOD": 0}
FRONTENDS = ("1.32.9", "1.49.6", "1.58.1")  # scripts/setup_browser.sh installs them
PINNED_FRONTEND = metadata.version("comfyui-frontend-package")  # what the venv's ComfyUI pins


def chosen_frontends() -> list[str]:
    """Every frontend, or the ones MUSAR_FRONTENDS names (space-separated; .ci/run gives each
    ComfyUI version a share so that every frontend runs once per CI run)."""
    every = sorted({PINNED_FRONTEND, *FRONTENDS})
    named = os.environ.get("MUSAR_FRONTENDS", "").split()
    unknown = [v for v in named if v not in every]
    if unknown:
        raise pytest.UsageError(f"MUSAR_FRONTENDS names {unknown}; the browser tier has {every}")
    return [v for v in every if v in named] if named else every


def frontend_args(version: str) -> tuple[str, ...]:
    """main.py arguments that serve ``version`` of the frontend."""
    if version == PINNED_FRONTEND:
        return ()
    static = serverutil.ROOT / ".comfyui" / f"frontend-{version}" / "comfyui_frontend_package" / "static"
    if not (static / "index.html").is_file():
        pytest.fail(f"frontend {version} not found in {static}: run scripts/setup_browser.sh")
    return ("--front-end-root", str(static))


@pytest.fixture(scope="module", params=chosen_frontends(),
                ids=lambda v: f"frontend-{v}")
def frontend(request):
    return request.param


def place_model_files(base: Path) -> None:
    """Empty files named as the shipped workflows' model files (read from their API copies), so
    the frontend's missing-model check (newer frontends mark such nodes) sees a user who has them."""
    sys.path.append(str(serverutil.ROOT))
    from musar_run.edits import MODEL_INPUTS

    for api in (serverutil.ROOT / "workflows" / "api").glob("*.json"):
        for node in json.loads(api.read_text()).values():
            for name, value in node["inputs"].items():
                folder = MODEL_INPUTS.get((node["class_type"], name))
                if folder and isinstance(value, str):
                    target = base / "models" / folder / value
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.touch()


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory, frontend):
    base = serverutil.make_base_dir(tmp_path_factory.mktemp("comfy-ui"))
    place_model_files(base)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps(USER_SETTINGS))
    with serverutil.running_server(base, frontend_args(frontend)) as server:
        server.frontend = frontend
        yield server


class Console:
    """Console messages and page errors of the session, with a filter for our own files."""

    def __init__(self):
        self.entries: list[tuple[str, str, str]] = []  # (type, text, url)
        self.responses: list[tuple[str, int]] = []  # (url, status) of our files

    def on_response(self, response):
        if PACK_URL in response.url:
            self.responses.append((response.url, response.status))

    def on_console(self, msg):
        self.entries.append((msg.type, msg.text, (msg.location or {}).get("url", "")))

    def on_page_error(self, err):
        self.entries.append(("pageerror", f"{err}\n{getattr(err, 'stack', '') or ''}", ""))

    def ours(self, types=("error", "warning", "pageerror")) -> list[tuple[str, str, str]]:
        return [e for e in self.entries if e[0] in types
                and (PACK_URL in e[1] or PACK_URL in e[2] or "[MUSAR]" in e[1])]


@dataclasses.dataclass
class UI:
    page: object  # playwright.sync_api.Page
    console: Console
    server: serverutil.ComfyServer

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def screenshot(self, name: str) -> Path:
        """Fit the graph in view and save test-artifacts/browser/<name>.png."""
        self.js("() => window.comfyAPI.app.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        self.page.wait_for_timeout(300)
        folder = ARTIFACTS if self.server.frontend == PINNED_FRONTEND else (
            ARTIFACTS / f"frontend-{self.server.frontend}")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


@pytest.fixture(scope="module")
def ui(ui_server):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed in the runtime venv: run scripts/setup_browser.sh")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: run scripts/setup_browser.sh (Debian chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="musar-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1920, "height": 1080})
        try:
            # The "Nodes 2.0" banner is dismissed the way a user would (its localStorage flag).
            context.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
            pg = context.pages[0] if context.pages else context.new_page()
            pg.on("console", console.on_console)
            pg.on("pageerror", console.on_page_error)
            pg.on("response", console.on_response)
            pg.goto(ui_server.url + "/")
            pg.wait_for_function(
                # Note is registered by a frontend extension of its own, at times after ours
                "() => window.LiteGraph?.registered_node_types?.MUSAR_Subject"
                " && window.LiteGraph.registered_node_types.Note"
                " && window.comfyAPI?.app?.app?.graph && window.comfyAPI.app.app.canvas",
                timeout=60_000)
            yield UI(pg, console, ui_server)
        finally:
            context.close()
