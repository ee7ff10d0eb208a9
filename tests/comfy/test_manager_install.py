"""Install the pack with the real ComfyUI-Manager, then start the real server on it.

``comfyui-manager`` 4.3 from the package registry (requirements-dev.txt) brings ``cm-cli``, the
command-line face of the Manager's own install code. A user's Manager installs a pack that is
not (yet) in the registry through "Install via Git URL": ``cm-cli install <git url>`` runs that
code path (clone into ``custom_nodes/``, then the pack's requirements through pip / uv). Here the
URL is this checkout's committed HEAD served by ``git daemon`` on loopback, the "user's ComfyUI"
is a fresh copy of the runtime's ComfyUI in a temporary folder, and nothing may reach the network:
pip and uv run offline, HTTP goes to a closed loopback proxy (the Manager's registry look-up then
fails at once, as on an offline machine). The runtime venv must come out unchanged.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import serverutil

pytestmark = pytest.mark.timeout(240)
USER_FOLDERS = ("custom_nodes", "models", "input", "output", "user", "temp", "tests", "tests-unit")


def run(cmd, cwd=None, timeout=120, env=None):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def offline_env(comfy) -> dict:
    closed = f"http://127.0.0.1:{serverutil.free_port()}"  # nothing listens there
    return {"COMFYUI_PATH": str(comfy), "PIP_NO_INDEX": "1", "UV_OFFLINE": "1",
            "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "ALL_PROXY": closed,
            "http_proxy": closed, "https_proxy": closed, "NO_PROXY": "127.0.0.1,localhost",
            "GIT_TERMINAL_PROMPT": "0", "PYTHONDONTWRITEBYTECODE": "1",
            "COLUMNS": "400"}  # cm-cli prints through rich, which wraps at 80 columns otherwise


@pytest.fixture
def git_url(tmp_path):
    """git://127.0.0.1:PORT/ComfyUI-MUSAR.git serving a bare clone of the committed HEAD."""
    served = tmp_path / "git"
    run(["git", "clone", "--quiet", "--bare", str(serverutil.ROOT), str(served / f"{serverutil.PACK_NAME}.git")])
    port = serverutil.free_port()
    daemon = subprocess.Popen(["git", "daemon", f"--base-path={served}", "--export-all", "--reuseaddr",
                               "--listen=127.0.0.1", f"--port={port}", str(served)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert daemon.poll() is None and time.monotonic() < deadline, "git daemon did not start"
                time.sleep(0.1)
        yield f"git://127.0.0.1:{port}/{serverutil.PACK_NAME}.git"
    finally:
        daemon.terminate()
        daemon.wait(10)


def test_comfyui_manager_installs_the_pack_from_its_git_url_and_the_server_loads_it(tmp_path, git_url):
    cm_cli = serverutil.venv_python().parent / "cm-cli"
    if not cm_cli.exists():
        pytest.fail(f"{cm_cli} not found: comfyui-manager is in requirements-dev.txt (scripts/setup.sh)")
    comfy = tmp_path / "ComfyUI"  # the user's ComfyUI: the runtime's code, empty user folders
    source = serverutil.comfy_dir()
    shutil.copytree(source, comfy, ignore=lambda folder, names: [
        n for n in names if n == "__pycache__" or (Path(folder) == source and n in USER_FOLDERS)])
    (comfy / "custom_nodes").mkdir()
    pack = comfy / "custom_nodes" / serverutil.PACK_NAME

    requirements = (serverutil.ROOT / "requirements.txt").read_text()
    listed = [line.split("#")[0].strip() for line in requirements.splitlines()]
    assert not any(r.lower().startswith(("torch", "comfy")) for r in listed if r), (
        "ComfyUI owns torch and its own packages; the pack must not list them")

    freeze = [str(serverutil.venv_python()), "-m", "pip", "freeze", "--disable-pip-version-check"]
    before = run(freeze).stdout
    t0 = time.monotonic()
    out = run([str(cm_cli), "install", git_url, "--mode", "local", "--exit-on-fail",
               "--user-directory", str(tmp_path / "manager")], env=offline_env(comfy), timeout=180)
    seconds = time.monotonic() - t0
    log = out.stdout + out.stderr
    assert "[INSTALLED]" in log and f"CLONE into '{pack}'" in log, log[-3000:]
    assert "pyarrow" in log, f"the Manager did not install the pack's requirements:\n{log[-3000:]}"
    assert run(freeze).stdout == before, "installing the pack through the Manager changed the runtime venv"
    head = run(["git", "rev-parse", "HEAD"], cwd=serverutil.ROOT).stdout.strip()
    assert run(["git", "rev-parse", "HEAD"], cwd=pack).stdout.strip() == head
    assert sorted(p.name for p in (comfy / "custom_nodes").iterdir()) == [serverutil.PACK_NAME]

    with serverutil.running_server(comfy) as server:
        info = server.get_json("/object_info")
        missing = [n for n in serverutil.NODE_IDS if n not in info]
        assert not missing, f"nodes missing after the Manager's install: {missing}\n{server.log_tail()}"
        assert all(info[n]["python_module"] == f"custom_nodes.{serverutil.PACK_NAME}"
                   for n in serverutil.NODE_IDS)
        scripts = [p for p in server.get_json("/extensions")
                   if p.startswith(f"/extensions/{serverutil.PACK_NAME}/")]
        assert scripts, "the installed pack's web/ scripts are not served"
        assert not server.pack_import_failures(), "\n".join(server.pack_import_failures())
        assert str(pack) in server.log(), "the server did not load the pack the Manager installed"
    print(f"cm-cli install (clone + requirements, offline): {seconds:.1f} s")


def test_registry_metadata_is_complete_and_points_at_files_of_this_repository():
    import tomllib

    meta = tomllib.loads((serverutil.ROOT / "pyproject.toml").read_text())
    comfy, project = meta["tool"]["comfy"], meta["project"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and project["name"] and project["version"]
    repo = project["urls"]["Repository"].rstrip("/")
    prefix = repo.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert comfy["Icon"].startswith(prefix), comfy["Icon"]
    icon = serverutil.ROOT / comfy["Icon"][len(prefix):]
    assert icon.is_file() and icon.read_text().lstrip().startswith("<svg"), icon
    requirements = [line.split("#")[0].strip() for line in
                    (serverutil.ROOT / "requirements.txt").read_text().splitlines()]
    assert sorted(project["dependencies"]) == sorted(r for r in requirements if r)
    workflow = (serverutil.ROOT / ".github" / "workflows" / "publish_action.yml").read_text()
    assert "Comfy-Org/publish-node-action@v1" in workflow and "REGISTRY_ACCESS_TOKEN" in workflow
    assert '- "pyproject.toml"' in workflow  # publishes when the version changes
