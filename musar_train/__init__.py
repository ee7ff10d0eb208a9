"""Command-line training of MUSAR dual-branch LoRAs (``python -m musar_train --config ...``).

Lives outside ``musar/`` because it loads models through ComfyUI used as a library."""
