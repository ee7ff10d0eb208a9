"""ComfyUI glue: V3 node schemas that translate ComfyUI types to ``musar`` calls."""

from comfy_api.latest import ComfyExtension, io

from . import apply_routing, examples, lora, preview, references, subject, testing, training


class MusarExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*subject.NODES, *lora.NODES, *apply_routing.NODES, *preview.NODES,
                *references.NODES, *training.NODES, *examples.NODES, *testing.NODES]
