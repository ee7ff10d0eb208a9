"""Wire types of the pack, declared once."""

from comfy_api.latest import io

SUBJECTS = io.Custom("MUSAR_SUBJECTS")  # musar.subjects.SubjectSet
ROUTING = io.Custom("MUSAR_ROUTING")  # musar.session.Recorder of the routed MODEL (read by the preview)
DATASET = io.Custom("MUSAR_DATASET")  # training samples (musar.data)
DUAL_LORA = io.Custom("MUSAR_DUAL_LORA")  # musar.lora.DualLoRA (trained, not yet saved)
REFERENCE_LABELS = io.Custom("MUSAR_REFERENCE_LABELS")  # musar.references.ReferenceLabels
REGION = io.Custom("MUSAR_REGION")  # musar.regions.Region (a subject's or a reference's layout region)
