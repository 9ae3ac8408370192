"""Errors the CLI turns into one clear line and a non-zero exit (no traceback for a user's mistake)."""


class FashionrecError(Exception):
    """Base class: the message names the file, row, field or parameter at fault."""


class DataError(FashionrecError):
    """Input data is missing, malformed or inconsistent."""


class ImageTooLarge(DataError):
    """An image whose pixel count exceeds the limit (a decompression bomb or simply too big to decode)."""


class ValidationFailed(FashionrecError):
    """A data-quality expectation failed; the message names the expectation and the culprits."""


class TrainingError(FashionrecError):
    """Training or evaluation cannot proceed (empty split, single class, bad config)."""


class GateFailed(FashionrecError):
    """The model gate rejected the candidate; nothing was registered."""


class ParityError(FashionrecError):
    """An exported model does not reproduce the PyTorch model."""


class EvaluationError(FashionrecError):
    """Evaluation cannot proceed (bad evaluate params, a split without images, no training run)."""


class ParamsError(FashionrecError, ValueError):
    """A params file or an override is malformed; the message names the key."""


class RegistryError(FashionrecError):
    """The MLflow registry refused an operation or holds something unexpected."""


class ModelSourceError(FashionrecError):
    """The model to deploy cannot be found or read (registry URI, alias, ONNX file)."""


class BundleError(FashionrecError):
    """A bundle is missing, incomplete or corrupted (the message names the file)."""


class SmokeTestFailed(BundleError):
    """A new bundle did not pass its smoke test; serving was not switched."""


class BadRequest(FashionrecError):
    """The client's fault: answered with `status` and `{"error": kind, "message": ...}`."""

    def __init__(self, message: str, status: int = 422, kind: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class KfpError(FashionrecError):
    """A Kubeflow Pipelines call (compile, submit, schedule, local run) failed."""
