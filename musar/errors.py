"""Typed errors. Every message says what was expected, what arrived and what to do."""


class MusarError(ValueError):
    """Base class of every error this pack raises on bad input."""


class LayoutError(MusarError):
    """Token layout / subject inputs that cannot be arranged (sizes, counts, masks)."""


class RoutingError(MusarError):
    """Routing settings that conflict or do not fit the model."""


class LoRAFormatError(MusarError):
    """A LoRA file that is corrupt, of an unknown layout, or made for another model."""


class ModelError(MusarError):
    """A model that is not the FLUX.1 architecture MUSAR works with."""


class DatasetError(MusarError):
    """Training data that cannot be read or is empty."""


class TrainingError(MusarError):
    """Training settings that cannot work (ranks, optimizer, output folder ...)."""



class HookError(ModelError):
    """The running ComfyUI lacks (or changed) a hook the pack relies on; names its version."""
