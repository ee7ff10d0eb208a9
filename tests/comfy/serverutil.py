"""The real ComfyUI server as a subprocess, for tests that talk to it over HTTP (or a browser).

No ComfyUI import here: the server runs in its own process from the runtime venv, on a free
loopback port, with a fresh ``--base-directory`` whose ``custom_nodes/ComfyUI-MUSAR`` is this
repository (a symlink) or a clone of it. Its log goes to ``<base>/server.log``.

    with running_server(make_base_dir(tmp_path)) as server:
        server.get_json("/object_info")

The server is stopped by its PID (terminate, then kill) when the block exits, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "ComfyUI-MUSAR"
NODE_IDS = json.loads((ROOT / "tests" / "node_ids.json").read_text())
START_TIMEOUT = 60.0
# ComfyUI's messages for a custom node (or comfy_extras file) that failed to load.
IMPORT_FAILURE = re.compile(r"Cannot import (?P<path>.+?) module for custom nodes"
                            r"|IMPORT FAILED\)?:? (?P<path2>\S+)"
                            r"|Error while calling comfy_entrypoint in (?P<path3>\S+)")


def _venv() -> Path:
    """The runtime venv (scripts/env.sh exports MUSAR_VENV), else the running one."""
    return Path(os.environ.get("MUSAR_VENV") or sys.prefix)


def venv_python() -> Path:
    """The runtime venv's python (scripts/setup.sh), else the running interpreter."""
    py = _venv() / "bin" / "python"
    return py if py.exists() else Path(sys.executable)


def comfy_dir() -> Path:
    """$COMFYUI_PATH, else the ComfyUI recorded by scripts/setup.sh, else .comfyui/0.3.75."""
    marker = _venv() / ".musar-comfyui-path"
    for c in (os.environ.get("COMFYUI_PATH"), marker.read_text().strip() if marker.is_file() else None,
              ROOT / ".comfyui" / "0.3.75"):
        if c and (Path(c) / "main.py").is_file():
            return Path(c).resolve()
    raise RuntimeError("no ComfyUI found: run scripts/setup.sh or set COMFYUI_PATH")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_base_dir(base: Path, pack: Path | None = None) -> Path:
    """A fresh ComfyUI base directory; ``custom_nodes/ComfyUI-MUSAR`` -> ``pack`` (default: repo)."""
    nodes = base / "custom_nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    link = nodes / PACK_NAME
    if pack is None or pack.resolve() != link.resolve():
        link.symlink_to(pack or ROOT, target_is_directory=True)
    return base


class ComfyServer:
    def __init__(self, proc: subprocess.Popen, port: int, base: Path, log_path: Path):
        self.proc, self.port, self.base, self.log_path = proc, port, base, log_path
        self.url = f"http://127.0.0.1:{port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def request(self, path: str, data: dict | None = None, timeout: float = 30.0):
        """(status, headers, body bytes); HTTP errors are returned, not raised."""
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body,
                                     headers={"Content-Type": "application/json"} if body else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def get_json(self, path: str):
        status, _, body = self.request(path)
        assert status == 200, f"GET {path} -> {status}: {body[:500]!r}\n{self.log_tail()}"
        return json.loads(body)

    def post_json(self, path: str, data: dict):
        status, _, body = self.request(path, data)
        return status, json.loads(body) if body else None

    def wait_history(self, prompt_id: str, timeout: float = 60.0) -> dict:
        """The /history entry of a prompt once it has finished (success or error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            self._check_alive()
            time.sleep(0.2)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout:.0f} s\n{self.log_tail()}")

    def pack_import_failures(self) -> list[str]:
        """Log lines where ComfyUI reports this pack failed to import."""
        return [line for line in self.log().splitlines()
                if IMPORT_FAILURE.search(line) and PACK_NAME in line]

    def _check_alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"the ComfyUI server exited with {self.proc.returncode}\n"
                                 f"{self.log_tail()}")

    def wait_ready(self, timeout: float = START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(self.url + "/object_info", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise AssertionError(f"ComfyUI did not answer /object_info within {timeout:.0f} s; log tail:\n"
                             f"{self.log_tail()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextlib.contextmanager
def running_server(base: Path, extra_args: tuple[str, ...] = (), timeout: float = START_TIMEOUT):
    """Start ``python main.py`` of the real ComfyUI on a free port; yield a ComfyServer; stop it."""
    port = free_port()
    log_path = base / "server.log"
    cmd = [str(venv_python()), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--database-url", "sqlite:///:memory:",
           "--disable-api-nodes", *extra_args]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        # Popen runs python itself (no shell), so proc.pid is the server's PID.
        proc = subprocess.Popen(cmd, cwd=comfy_dir(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    server = ComfyServer(proc, port, base, log_path)
    try:
        server.wait_ready(timeout)
        yield server
    finally:
        server.stop()
