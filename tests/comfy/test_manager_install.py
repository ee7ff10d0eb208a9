"""Install the pack the way ComfyUI-Manager does, then start the real server on it.

Manager's install of a git pack is: ``git clone <repo> custom_nodes/<name>``, then
``<ComfyUI's python> -m pip install -r requirements.txt`` (and ``install.py`` if the pack has
one), then a server restart. Here the repository is this checkout's committed HEAD, the python
is the runtime venv's, and the server gets a fresh base directory holding only the clone.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import serverutil

pytestmark = pytest.mark.timeout(180)


def run(cmd, cwd=None, timeout=120, env=None):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_git_clone_and_requirements_install_give_a_working_pack(tmp_path):
    base = tmp_path / "comfy"
    pack = base / "custom_nodes" / serverutil.PACK_NAME
    run(["git", "clone", "--quiet", "--no-hardlinks", str(serverutil.ROOT), str(pack)])
    head = run(["git", "rev-parse", "HEAD"], cwd=serverutil.ROOT).stdout.strip()
    assert run(["git", "rev-parse", "HEAD"], cwd=pack).stdout.strip() == head

    requirements = (pack / "requirements.txt").read_text()
    listed = [line.split("#")[0].strip() for line in requirements.splitlines()]
    assert not any(r.lower().startswith(("torch", "comfy")) for r in listed if r), (
        "ComfyUI owns torch and its own packages; the pack must not list them")

    t0 = time.monotonic()
    # PIP_NO_INDEX: an already satisfied install must not need the network (hermetic CI).
    pip = run([str(serverutil.venv_python()), "-m", "pip", "install", "--disable-pip-version-check",
               "-r", "requirements.txt"], cwd=pack, env={"PIP_NO_INDEX": "1"})
    pip_seconds = time.monotonic() - t0
    assert "Successfully installed" not in pip.stdout, (
        "installing the pack's requirements changed the runtime venv (scripts/setup.sh installs "
        f"them; is requirements.txt out of sync?):\n{pip.stdout}")
    if (pack / "install.py").exists():  # Manager runs it after the requirements
        run([str(serverutil.venv_python()), "install.py"], cwd=pack)

    with serverutil.running_server(base) as server:
        info = server.get_json("/object_info")
        missing = [n for n in serverutil.NODE_IDS if n not in info]
        assert not missing, f"nodes missing after a Manager-style install: {missing}\n{server.log_tail()}"
        assert all(info[n]["python_module"] == f"custom_nodes.{serverutil.PACK_NAME}"
                   for n in serverutil.NODE_IDS)
        scripts = [p for p in server.get_json("/extensions")
                   if p.startswith(f"/extensions/{serverutil.PACK_NAME}/")]
        assert scripts, "the clone's web/ scripts are not served"
        assert not server.pack_import_failures(), "\n".join(server.pack_import_failures())
        assert str(pack) in server.log(), "the server did not load the pack from the clone"
    print(f"pip install -r requirements.txt (already satisfied): {pip_seconds:.1f} s")
