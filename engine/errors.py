"""Errors the engine raises on bad input: each says what is wrong and what to do."""


class EngineError(Exception):
    """Base class for every error the engine reports to a user."""


class DataError(EngineError):
    """A data root, file or layout is missing or malformed, or data would need a download."""


class ConfigError(EngineError, ValueError):
    """A setting is out of range or names an unknown choice."""


class CheckpointError(EngineError):
    """A checkpoint is missing, truncated, from another format version, or does not fit its config."""


class TrainingError(EngineError):
    """Training cannot continue (for example, too many non-finite losses in a row)."""


class Diverged(TrainingError):
    """Training stopped because the held-out IWAE fell far below its best (or the weights went non-finite)."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint; ``signum`` says which signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
