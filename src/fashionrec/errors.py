"""Errors the CLI turns into one clear line and a non-zero exit (no traceback for a user's mistake)."""


class FashionrecError(Exception):
    """Base class: the message names the file, row, field or parameter at fault."""


class DataError(FashionrecError):
    """Input data is missing, malformed or inconsistent."""


class ValidationFailed(FashionrecError):
    """A data-quality expectation failed; the message names the expectation and the culprits."""


class TrainingError(FashionrecError):
    """Training or evaluation cannot proceed (empty split, single class, bad config)."""


class GateFailed(FashionrecError):
    """The model gate rejected the candidate; nothing was registered."""


class ParityError(FashionrecError):
    """An exported model does not reproduce the PyTorch model."""
