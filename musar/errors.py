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


def choose(options: dict, key, what: str):
    """Look ``key`` up in ``options``; on a miss raise a MusarError listing the valid keys."""
    try:
        return options[key]
    except (KeyError, TypeError):
        valid = ", ".join(repr(k) for k in options)
        raise MusarError(f"unknown {what} {key!r}: expected one of {valid}") from None
