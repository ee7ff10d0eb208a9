"""The toy world's one error type (the world is not part of the node pack's method core)."""


class ToyWorldError(ValueError):
    """Bad input to the toy world or its instruments; the message says what was expected."""


def choose(options: dict, key, what: str):
    """Look ``key`` up in ``options``; on a miss raise a ToyWorldError listing the valid keys."""
    try:
        return options[key]
    except (KeyError, TypeError):
        valid = ", ".join(repr(k) for k in options)
        raise ToyWorldError(f"unknown {what} {key!r}: expected one of {valid}") from None
