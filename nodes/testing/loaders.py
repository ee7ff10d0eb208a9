"""``MUSAR/testing`` nodes: tiny FLUX stand-ins so graphs run on a CPU with no model files."""

from comfy_api.latest import io

from . import qwen, standins

SIZES = {  # FLUX.1 stand-ins (also what the training CLI's tiny models are)
    "tiny (128 wide, 2+2 blocks)": dict(hidden=128, heads=4, depth=2, single_depth=2),
    "small (256 wide, 2+4 blocks)": dict(hidden=256, heads=4, depth=2, single_depth=4),
    "bench (1024 wide, 2+2 blocks)": dict(hidden=1024, heads=8, depth=2, single_depth=2),
}
FLUX2_SIZES = {
    "FLUX.2 tiny (128 wide, 2+2 blocks)": dict(hidden=128, heads=4, depth=2, single_depth=2),
}


KLEIN = "FLUX.2 [klein] tiny (128 wide, 2+2 blocks, Qwen3 text)"
QWEN = "Qwen-Image-Edit tiny (64 wide, 2 blocks, Qwen2.5-VL text)"
QWEN_2511 = "Qwen-Image-Edit-2511 tiny (64 wide, 2 blocks, Qwen2.5-VL text)"
OTHERS = (KLEIN, QWEN, QWEN_2511)


def build_standins(size: str, seed: int):
    """(MODEL, CLIP, VAE) stand-ins of the named size and family, each with its own text
    encoder and the VAE of its latent shape."""
    if size == KLEIN:
        return (standins.build_flux(standins.klein_unet_config(), seed=seed),
                standins.build_klein_clip(seed), standins.build_flux2_vae(seed))
    if size in (QWEN, QWEN_2511):
        method = "index_timestep_zero" if size == QWEN_2511 else "index"
        return (qwen.build_qwen_image(qwen.qwen_image_unet_config(ref_method=method), seed=seed),
                qwen.build_qwen_clip(seed), qwen.build_wan_vae(seed))
    if size in FLUX2_SIZES:
        model = standins.build_flux(standins.flux2_unet_config(**FLUX2_SIZES[size]), seed=seed)
        return model, standins.build_clip(seed), standins.build_flux2_vae(seed)
    model = standins.build_flux(standins.flux_unet_config(**SIZES[size]), seed=seed)
    return model, standins.build_clip(seed), standins.build_vae(seed)


class TinyFluxLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MUSAR_TinyFluxLoader",
            display_name="MUSAR Tiny FLUX Stand-ins (testing)",
            category="MUSAR/testing",
            description=(
                "Builds a MODEL of a routed family (FLUX.1; FLUX.2 [dev]; FLUX.2 [klein] with "
                "its Qwen3 text encoder; Qwen-Image-Edit 2509 / 2511 with its Qwen2.5-VL text "
                "encoder and vision tower), its text encoder (CLIP) and a VAE of its latent "
                "shape from real ComfyUI classes with tiny widths and seeded random weights. It "
                "exercises the whole MUSAR pipeline on a CPU in seconds; the images it makes are "
                "noise, not art. Use UNETLoader / CLIPLoader / VAELoader for real models."),
            is_experimental=True,
            inputs=[
                io.Combo.Input("size", options=[*SIZES, *FLUX2_SIZES, *OTHERS], default=next(iter(SIZES)),
                               tooltip="Architecture, width and depth of the stand-in transformer."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, step=1,
                             control_after_generate=False,
                             tooltip="Seed of the random weights (same seed, same models)."),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def validate_inputs(cls, size=None):
        known = [*SIZES, *FLUX2_SIZES, *OTHERS]
        if size is not None and size not in known:
            return f"size: unknown option {size!r}, expected one of {', '.join(map(repr, known))}"
        return True

    @classmethod
    def execute(cls, size, seed) -> io.NodeOutput:
        return io.NodeOutput(*build_standins(size, seed))


NODES = [TinyFluxLoader]
