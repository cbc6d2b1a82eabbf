"""Exceptions gpubp raises on purpose, each with a message that says what to do."""


class BackendUnavailableError(RuntimeError):
    """The requested device ("cuda") cannot be used here; the message says why."""


class DataError(ValueError):
    """A data file or array is missing, malformed, truncated or inconsistent."""


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss; the message names the epoch and suggests a fix."""


class DeviceMemoryError(MemoryError):
    """Training ran out of device (or host) memory; the message suggests a batch size that fits."""


class RankFailedError(RuntimeError):
    """Another rank of a data-parallel run failed before training; the message names the rank
    and gives its error."""
