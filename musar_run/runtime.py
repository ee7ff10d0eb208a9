"""Real ComfyUI used as a library: bootstrap, load this pack the way ComfyUI does, validate and
execute API-format prompts with ComfyUI's own PromptExecutor.

Shared by the headless runner (`python -m musar_run`), the training CLI and the tier-2 tests, so
there is exactly one way the pack meets ComfyUI outside the server.

Order matters: ComfyUI's directory must be first on sys.path (its top-level ``nodes.py`` would
otherwise be shadowed by this repository's ``nodes/`` package), ``comfy.cli_args`` must be set
before ``comfy.model_management`` is imported, and ``utils.extra_config`` before ``nodes``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import sys
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "ComfyUI-MUSAR"
_STATE: dict = {}


def find_comfyui(explicit: str | os.PathLike | None = None) -> Path:
    """ComfyUI checkout: explicit argument, then $COMFYUI_PATH, then the one scripts/setup.sh
    built the running venv for, then the ComfyUI this pack is installed in
    (custom_nodes/<pack>), then .comfyui/0.3.75."""
    candidates = [explicit, os.environ.get("COMFYUI_PATH")]
    for venv in (Path(sys.prefix), REPO_ROOT / ".venv"):
        marker = venv / ".musar-comfyui-path"
        if marker.is_file():
            candidates.append(marker.read_text().strip())
    if REPO_ROOT.parent.name == "custom_nodes":  # installed as ComfyUI/custom_nodes/<pack>
        candidates.append(REPO_ROOT.parent.parent)
    candidates.append(REPO_ROOT / ".comfyui" / "0.3.75")
    for c in candidates:
        if c and (Path(c) / "main.py").is_file() and (Path(c) / "comfy").is_dir():
            return Path(c).resolve()
    raise RuntimeError(
        "No ComfyUI found: set COMFYUI_PATH to a ComfyUI checkout or run scripts/setup.sh "
        "(it installs ComfyUI 0.3.75 into .comfyui/)."
    )


def bootstrap(comfy_dir: str | os.PathLike | None = None, base_dir: str | os.PathLike | None = None,
              cpu: bool = True) -> Path:
    """Make ComfyUI importable and configure it (idempotent). Returns the ComfyUI directory."""
    if "comfy_dir" in _STATE:
        return _STATE["comfy_dir"]
    comfy = find_comfyui(comfy_dir)
    root = str(REPO_ROOT)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != root]
    sys.path.insert(0, str(comfy))
    sys.path.append(root)  # last: musar_run / toyworld stay importable, ComfyUI's nodes.py wins
    import comfy.cli_args
    import comfy.options  # noqa: F401  (ComfyUI's own import order)

    args = comfy.cli_args.args
    args.cpu = cpu or args.cpu
    args.disable_api_nodes = True
    if base_dir is not None:
        args.base_directory = str(base_dir)
        Path(base_dir).mkdir(parents=True, exist_ok=True)
    import utils.extra_config  # noqa: F401  (before `nodes`: nodes.py shadows ComfyUI's utils)

    import nodes  # noqa: F401

    _STATE["comfy_dir"] = comfy
    return comfy


async def _init_nodes(pack_dir: Path):
    import nodes

    await nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)
    ok = await nodes.load_custom_node(str(pack_dir), module_parent="custom_nodes")
    if not ok:
        raise RuntimeError(f"ComfyUI failed to load the pack from {pack_dir} (see the log above)")


def load_pack(pack_dir: str | os.PathLike | None = None):
    """Load core extra nodes and this pack through ``nodes.load_custom_node``; returns the pack
    module (its subpackages are reachable as ``pack.musar``, ``pack.nodes``)."""
    bootstrap()
    if "pack" in _STATE:
        return _STATE["pack"]
    pack_dir = Path(pack_dir or REPO_ROOT).resolve()
    asyncio.run(_init_nodes(pack_dir))
    name = str(pack_dir).replace(".", "_x_")
    pack = sys.modules[name]
    import importlib

    for sub in ("musar", "nodes"):
        setattr(pack, sub, importlib.import_module(f"{name}.{sub}"))
    _STATE["pack"] = pack
    return pack


def pack_module(pack, name: str):
    """Module ``name`` (e.g. "nodes.testing.standins", "musar.attention") of the pack as ComfyUI loaded
    it (``load_pack``), so its classes are the ones ComfyUI executes."""
    import importlib

    return importlib.import_module(f"{pack.__name__}.{name}")


class _ServerStub:
    """What PromptExecutor needs of PromptServer when no server runs: records events."""

    def __init__(self, on_event=None):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.events: list[tuple[str, dict]] = []
        self.on_event = on_event
        self.sockets_metadata: dict = {}  # read by ComfyUI's progress handler for previews

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))
        if self.on_event is not None:
            self.on_event(event, data)

    def queue_updated(self):
        pass


@dataclasses.dataclass
class RunResult:
    ok: bool
    node_errors: dict
    error: dict | None
    ui: dict
    messages: list
    executor: object = None

    def output(self, node_id: str):
        """The Python outputs (tuple) a node produced in this run."""
        entry = self.executor.caches.outputs.get(str(node_id))
        if inspect.isawaitable(entry):  # ComfyUI >= 0.2x reads its caches asynchronously
            entry = asyncio.run(_awaited(entry))
        if entry is None:
            raise KeyError(f"node {node_id} produced no cached output")
        outs = entry.outputs if hasattr(entry, "outputs") else entry
        return tuple(o[0] if isinstance(o, list) and len(o) == 1 else o for o in outs)

    def raise_for_error(self):
        if not self.ok:
            raise RuntimeError(f"prompt failed: {self.error or self.node_errors}")


async def _awaited(awaitable):
    return await awaitable


def new_executor(on_event=None):
    """ComfyUI's PromptExecutor with the classic cache and no RAM-pressure eviction, as the
    server builds it. ``ram_inactive`` is read by newer ComfyUI (0.2x), ignored by 0.3.75."""
    import execution

    return execution.PromptExecutor(_ServerStub(on_event), cache_type=execution.CacheType.CLASSIC,
                                    cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})


def is_musar_error(exc: BaseException | None) -> bool:
    """A MusarError of the pack as ComfyUI loaded it (its module path depends on the folder the
    pack was loaded from, so the class is recognised by name along its bases)."""
    return exc is not None and any(c.__name__ == "MusarError" for c in type(exc).__mro__)


def validate(prompt: dict):
    """``execution.validate_prompt`` → (valid, error, output node ids, node_errors)."""
    import execution

    return asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))


def run_prompt(prompt: dict, executor=None, on_event=None) -> RunResult:
    """Validate, then execute with ComfyUI's PromptExecutor (no server)."""

    valid, error, outputs, node_errors = validate(prompt)
    if not valid:
        return RunResult(False, node_errors, error, {}, [])
    if executor is None:
        executor = new_executor(on_event)
    elif on_event is not None:
        executor.server.on_event = on_event
    # PromptExecutor reports per-node events (executing, executed, progress_state) only to a client
    extra_data = {"client_id": "musar-runtime"} if getattr(executor.server, "on_event", None) else {}
    executor.execute(prompt, str(uuid.uuid4()), extra_data=extra_data, execute_outputs=outputs)
    err = next((d for e, d in executor.status_messages if e == "execution_error"), None)
    ui = getattr(executor, "history_result", {}).get("outputs", {})
    return RunResult(executor.success and err is None, {}, err, ui, executor.status_messages, executor)
