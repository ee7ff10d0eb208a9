#!/usr/bin/env bash
# The README's test command (`make test`): set up the runtime if needed, then run
#   tier 1 (tests/core)  - pure torch, no ComfyUI on sys.path
#   tier 2 (tests/comfy) - the real ComfyUI runtime: ModelPatcher, samplers, PromptExecutor, server
#   adversarial (tests/adversarial) - bad prompts, path escapes, bad CLI input and /interrupt
#                                     against a real ComfyUI server (SECURITY.md)
#   tier 3 (tests/browser) - the real frontend in headless Debian Chromium (installed if missing)
# All stages always run; the exit code is non-zero if any fails. Extra args go to pytest.
# COMFYUI_PATH=<checkout> runs every stage against that ComfyUI (its own venv, scripts/env.sh).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
SECONDS=0
"$ROOT/scripts/setup.sh" || exit 1
echo "== setup: ${SECONDS}s =="
export PYTHONDONTWRITEBYTECODE=1
cd "$ROOT"

echo "== tier 1: tests/core (no ComfyUI) =="
"$PY" -m pytest tests/core "$@"
tier1=$?
echo "== tier 1 done at ${SECONDS}s =="
echo "== tier 2: tests/comfy (real ComfyUI $(cat "$MUSAR_VENV/.musar-comfyui-path")) =="
"$PY" -m pytest tests/comfy --durations=12 "$@"
tier2=$?
echo "== tier 2 done at ${SECONDS}s =="
echo "== adversarial: tests/adversarial (a real ComfyUI server under bad input) =="
start=$SECONDS
"$PY" -m pytest tests/adversarial "$@"
adversarial=$?
echo "== adversarial done at ${SECONDS}s ($((SECONDS - start))s) =="
echo "== tier 3: tests/browser (real frontend, headless Chromium) =="
"$ROOT/scripts/setup_browser.sh" && "$PY" -m pytest tests/browser "$@"
tier3=$?
echo "== tier 3 done at ${SECONDS}s =="
echo "== summary: tier 1 exit $tier1, tier 2 exit $tier2, adversarial exit $adversarial, tier 3 exit $tier3 =="
[ "$tier1" = 0 ] && [ "$tier2" = 0 ] && [ "$adversarial" = 0 ] && [ "$tier3" = 0 ]
