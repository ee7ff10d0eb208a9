"""Wire types of the pack, declared once."""

from comfy_api.latest import io

SUBJECTS = io.Custom("MUSAR_SUBJECTS")  # musar.subjects.SubjectSet
ROUTING = io.Custom("MUSAR_ROUTING")  # nodes.routing.RoutingHandle (read by the preview node)
DATASET = io.Custom("MUSAR_DATASET")  # training samples (musar.data)
DUAL_LORA = io.Custom("MUSAR_DUAL_LORA")  # musar.lora.DualLoRA (trained, not yet saved)
