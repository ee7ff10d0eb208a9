# ComfyUI-MUSAR developer commands. Every target sets up what it needs (scripts/setup.sh is
# idempotent: minutes the first time, well under a second afterwards).
# .venv, or the venv of $COMFYUI_PATH (scripts/env.sh)
PY = $(shell COMFYUI_PATH="$(COMFYUI_PATH)" scripts/env.sh --python)
export COMFYUI_PATH
TOY_SIZE ?= medium
SEEDS ?= 0 1 2

.PHONY: setup test test-core test-comfy test-adversarial serve demo bench toy-base toy-lora eval-toy toy-refbase eval-toy-refs eval-toy-cache replicate lint clean

setup:            ## .venv with CPU torch 2.13.0 + ComfyUI 0.3.75, pack linked; COMFYUI_PATH=<checkout>: that ComfyUI with its own venv (every target)
	scripts/setup.sh

test:             ## every test stage: tier 1, tier 2, the adversarial tier, tier 3 (the README's test command and what CI runs)
	scripts/test.sh

test-core: setup  ## tier 1 only (pure torch)
	$(PY) -m pytest tests/core

test-comfy: setup ## tier 2 only (real ComfyUI)
	$(PY) -m pytest tests/comfy

test-adversarial: setup ## the adversarial tier only: bad prompts, path escapes, bad CLI input, /interrupt against a real ComfyUI server (SECURITY.md)
	$(PY) -m pytest tests/adversarial

serve:            ## ComfyUI server + frontend on http://127.0.0.1:8188 with the pack loaded
	scripts/serve.sh

demo:             ## the two-subject workflow headless on the trained toy-world model, with and without routing -> output/toy_demo.png; DEMO_ARGS="--tiny" random stand-ins; real FLUX: DEMO_ARGS="--models DIR"
	scripts/demo.sh $(DEMO_ARGS)

toy-base: setup   ## toy world stage 1 (docs/TOY_WORLD.md): the base model and its gate -> toyworld/weights (TOY_SIZE=medium: the ~6 M base -> .cache/toyworld/medium); resumable, nice'd; TOY_ARGS="--steps 4 --out /tmp/x --no-gate" for a smoke run
	nice $(PY) -m toyworld.train_base --size $(TOY_SIZE) $(TOY_ARGS)

toy-lora: setup   ## toy world stage 2: the two dual LoRAs through the pack's trainer (static routing / dense attention, side by side) and their gates -> toyworld/weights; resumable
	nice $(PY) -m toyworld.train_lora --size $(TOY_SIZE) --attention static $(TOY_ARGS) & p=$$!; \
	nice $(PY) -m toyworld.train_lora --size $(TOY_SIZE) --attention dense $(TOY_ARGS); s=$$?; \
	wait $$p && [ $$s = 0 ]

eval-toy: setup   ## toy world stage 3: the evaluation through the real ComfyUI graph (held-out identities, 7 conditions, counterfactual swaps; three processes side by side, then merged) -> .cache/toyworld[/medium]/eval/table.md; resumable; EVAL_ARGS="--counts 2:4,3:4,4:4" for a quick run
	nice $(PY) -m toyworld.eval --size $(TOY_SIZE) --part text $(EVAL_ARGS) & p=$$!; \
	nice $(PY) -m toyworld.eval --size $(TOY_SIZE) --part tuned $(EVAL_ARGS) & q=$$!; \
	nice $(PY) -m toyworld.eval --size $(TOY_SIZE) --part routing $(EVAL_ARGS); s=$$?; \
	wait $$p && wait $$q && [ $$s = 0 ]
	$(PY) -m toyworld.eval --size $(TOY_SIZE) --merge $(EVAL_ARGS)

toy-refbase: setup ## toy world, the multi-reference base (docs/TOY_WORLD.md §10): 1-4 ReferenceLatent pictures ("index" method) placed where the prompt says, dense attention, then its gate -> .cache/toyworld/refbase; resumable (also from a checkpoint parked in toyworld/checkpoints: python -m toyworld.parked), nice'd; REF_ARGS="--steps 20 --no-gate --out /tmp/x --work /tmp/xw" for a smoke run
	nice $(PY) -m toyworld.train_refbase $(REF_ARGS)

eval-toy-refs: setup ## MUSAR Route References on the multi-reference base (off / static / dynamic / hard / soft regions; held-out identities, counterfactual swaps; two parts side by side, then merged) -> .cache/toyworld/refbase/eval/table.md; resumable; EVAL_ARGS="--counts 2:4,3:4,4:4" for a quick run
	nice $(PY) -m toyworld.refeval --part plain $(EVAL_ARGS) & p=$$!; \
	nice $(PY) -m toyworld.refeval --part regions $(EVAL_ARGS); s=$$?; \
	wait $$p && [ $$s = 0 ]
	$(PY) -m toyworld.refeval --merge $(EVAL_ARGS)
	[ -n "$(EVAL_ARGS)" ] || $(PY) -m toyworld.replication publish-refs

eval-toy-cache: setup ## isolation and the exact reference cache on the multi-reference base (docs/TOY_WORLD.md §13: off / dynamic / isolated / isolated + cache / core's Flux KV Cache); needs a ComfyUI with FluxKVCache: COMFYUI_PATH=<0.33 checkout> make eval-toy-cache; two parts side by side, merged, published to toyworld/results/refbase/cache; resumable
	nice $(PY) -m toyworld.refeval --study cache --part plain $(EVAL_ARGS) & p=$$!; \
	nice $(PY) -m toyworld.refeval --study cache --part isolated $(EVAL_ARGS); s=$$?; \
	wait $$p && [ $$s = 0 ]
	$(PY) -m toyworld.refeval --study cache --merge $(EVAL_ARGS)
	[ -n "$(EVAL_ARGS)" ] || $(PY) -m toyworld.replication publish-cache
	[ -n "$(EVAL_ARGS)" ] || $(PY) -m toyworld.replication analyse-cache

replicate: setup ## the MUSAR result over LoRA seeds 0-2 on the medium base (docs/TOY_WORLD.md §11; needs make toy-base TOY_SIZE=medium): per seed its two LoRAs side by side, then (a)-(d) on case seed 2 in two processes, then the pre-registered analysis -> toyworld/results/primary.md; resumable (a finished stage is skipped), nice'd; SEEDS="1 2" for some seeds
	for s in $(SEEDS); do \
	  nice $(PY) -m toyworld.replication train --seed $$s --attention static & p=$$!; \
	  nice $(PY) -m toyworld.replication train --seed $$s --attention dense; t=$$?; \
	  wait $$p && [ $$t = 0 ] || exit 1; \
	  nice $(PY) -m toyworld.replication eval --seed $$s || exit 1; done
	$(PY) -m toyworld.replication analyse

bench:            ## performance bench (docs/PERFORMANCE.md): routed vs dense vs naive attention, sampling steps vs ReferenceLatent / text-to-image; prints PASS/MISS per target, never fails the build; report in bench/results/report.md
	scripts/setup.sh
	MUSAR_BENCH_COMMAND="make bench" $(PY) bench/run.py $(BENCH_ARGS) || echo "[bench] MISS: the bench crashed (see above)"

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf output .cache test-artifacts
