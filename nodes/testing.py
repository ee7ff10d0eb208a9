"""``MUSAR/testing`` nodes: tiny FLUX stand-ins so graphs run on a CPU with no model files."""

from comfy_api.latest import io

from ..musar.errors import choose
from . import standins

SIZES = {
    "tiny (128 wide, 2+2 blocks)": dict(hidden=128, heads=4, depth=2, single_depth=2),
    "small (256 wide, 2+4 blocks)": dict(hidden=256, heads=4, depth=2, single_depth=4),
    "bench (1024 wide, 2+2 blocks)": dict(hidden=1024, heads=8, depth=2, single_depth=2),
}


class TinyFluxLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_TinyFluxLoader",
            display_name="MUSAR Tiny FLUX Stand-ins (testing)",
            category="MUSAR/testing",
            description=(
                "Builds a FLUX-architecture MODEL, a FLUX dual text encoder (CLIP-L + T5) and a "
                "16-channel VAE from real ComfyUI classes with tiny widths and seeded random "
                "weights. It exercises the whole MUSAR pipeline on a CPU in seconds; the images "
                "it makes are noise, not art. Use UNETLoader / DualCLIPLoader / VAELoader for "
                "real FLUX."),
            is_experimental=True,
            inputs=[
                io.Combo.Input("size", options=list(SIZES), default=next(iter(SIZES)),
                               tooltip="Width and depth of the stand-in FLUX transformer."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, step=1,
                             control_after_generate=False,
                             tooltip="Seed of the random weights (same seed, same models)."),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def validate_inputs(cls, size):  # V3 combo values are not checked by ComfyUI
        return size is None or size in SIZES or f"unknown stand-in size {size!r}: expected one of {list(SIZES)}"

    @classmethod
    def execute(cls, size, seed) -> io.NodeOutput:
        spec = choose(SIZES, size, "stand-in size")
        config = standins.flux_unet_config(**spec)
        model = standins.build_flux(config, seed=seed)
        return io.NodeOutput(model, standins.build_clip(seed), standins.build_vae(seed))


NODES = [TinyFluxLoader]
