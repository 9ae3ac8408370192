"""Errors the CLI turns into one clear line and a non-zero exit (no traceback for a user's mistake)."""


class FashionrecError(Exception):
    """Base class: the message names the file, row, field or parameter at fault."""


class DataError(FashionrecError):
    """Input data is missing, malformed or inconsistent."""


class ImageTooLarge(DataError):
    """An image whose pixel count exceeds the limit (a decompression bomb or simply too big to decode)."""


class ImageRefused(DataError):
    """A decodable image whose shape or cost the limits refuse: `kind` "bad_shape" (too thin, too small)
    or "too_costly" (its decoded raster exceeds the per-request memory limit)."""

    def __init__(self, message: str, kind: str = "bad_shape") -> None:
        super().__init__(message)
        self.kind = kind


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


class MissingDependency(FashionrecError):
    """An optional dependency a feature needs (an index kind's library) is not installed here; the message
    names the feature and the pyproject extra that installs it."""


class SmokeTestFailed(BundleError):
    """A new bundle did not pass its smoke test; serving was not switched."""


class HttpError(FashionrecError):
    """An error with its HTTP answer: `status` and a stable `kind` (`{"error": kind, "message": ...}`)."""

    def __init__(self, message: str, status: int, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class BadRequest(HttpError):
    """The client's fault: answered with `status` and `{"error": kind, "message": ...}`."""

    def __init__(self, message: str, status: int = 422, kind: str = "invalid_request") -> None:
        super().__init__(message, status, kind)


class ServiceUnavailable(HttpError):
    """The server's trouble, not the client's (overloaded, out of memory, no bundle): a 503 with a stable
    `kind` and a `Retry-After` of `retry_after_s` seconds."""

    def __init__(self, message: str, kind: str = "unavailable", retry_after_s: int = 1) -> None:
        super().__init__(message, 503, kind)
        self.retry_after_s = retry_after_s


class KfpError(FashionrecError):
    """A Kubeflow Pipelines call (compile, submit, schedule, local run) failed."""


class DataVersionError(FashionrecError):
    """A data version cannot be read or recorded (git revision, DVC lock entry, remote, commit)."""


class WebhookRefused(HttpError):
    """A webhook delivery failed verification (signature, timestamp, replay, shape); nothing was done."""

    def __init__(self, message: str, status: int = 401, kind: str = "forged") -> None:
        super().__init__(message, status, kind)


class IndexUnavailable(ServiceUnavailable):
    """The index engine behind the bundle (a Milvus server) is unreachable, refuses the call, or lacks the
    bundle's collection: a 503 at serve time, a failed deploy (the live bundle keeps serving) at deploy time.
    The message names the URI and the collection, never the token."""

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message, kind="index_unavailable", retry_after_s=retry_after_s)
