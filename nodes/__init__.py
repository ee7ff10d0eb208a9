"""ComfyUI glue: V3 node schemas that translate ComfyUI types to ``musar`` calls."""

from comfy_api.latest import ComfyExtension, io

from . import examples, lora, references, routing, subject, testing, toy, training


class MusarExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*subject.NODES, *lora.NODES, *routing.NODES, *references.NODES, *testing.NODES,
                *toy.NODES, *training.NODES, *examples.NODES]
