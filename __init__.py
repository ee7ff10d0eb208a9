"""ComfyUI-MUSAR: MUSAR multi-subject customization for FLUX, as native ComfyUI nodes.

ComfyUI loads this folder as a custom node pack: it serves ``web/`` and calls
``comfy_entrypoint`` (V3 node API). Everything else lives in ``nodes/`` (ComfyUI glue) and
``musar/`` (pure torch).
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import MusarExtension

    return MusarExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
