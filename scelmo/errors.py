"""Exceptions and warnings raised by scelmo.

Every message says what went wrong *and* what to do next. Catch :class:`ScelmoError`
to handle all of them; the subclasses exist so that callers (the CLI, the R bridge)
can map them to exit codes or R condition classes.
"""

from __future__ import annotations


class ScelmoError(Exception):
    """Base class of every error scelmo raises on purpose."""

    exit_code = 1


class ConfigError(ScelmoError):
    """The configuration is invalid (unknown key, bad value, missing file)."""

    exit_code = 2


class InputError(ScelmoError, ValueError):
    """The user's data cannot be used as given (bad shape, NaN, negative values...)."""

    exit_code = 3


class DiskFullError(ScelmoError):
    """The file system ran out of space (or quota) while writing an output; the partial
    output was removed, and an output that was there before is left as it was."""

    exit_code = 3

    def __init__(self, path: object = None) -> None:
        where = f" while writing {path}" if path is not None else ""
        super().__init__(f"No space left on device{where}; nothing was written.")
        self.path = path


class UnknownComponentError(ScelmoError, KeyError):
    """A plugin component was asked for by a name nobody registered."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PluginError(ScelmoError):
    """A plugin failed: it did not load or register (raised with ``plugins.strict = true``;
    otherwise a :class:`PluginWarning` and the plugin is skipped), or one of its components
    returned something unusable (an aggregator's block of the wrong shape, NaNs)."""

    exit_code = 2


class IntegrityError(ScelmoError):
    """A file on disk does not match its recorded checksum."""

    #: What to do about a saved model that is damaged (said by the Model and by a head's loader).
    RESTORE_MODEL = ("Copy the model directory again from where it came from (or a backup), or train it again "
                     "(`scelmo train ... -o DIR`, or `Model.train()` and `Model.save()`).")


class OfflineError(ScelmoError):
    """A network role was requested while ``offline = true``."""

    exit_code = 2  # the configuration contradicts itself


class ProviderError(ScelmoError):
    """A provider (LLM or embedding service) failed after retries, or answered wrongly."""

    exit_code = 5


class TransientProviderError(ProviderError):
    """A failure worth retrying (rate limit, 5xx, timeout, connection error).

    Raised by provider plugins inside one call; :func:`scelmo.llm.calls.with_retries`
    waits (``retry_after`` seconds when the server said so) and tries again.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BudgetExceededError(ScelmoError):
    """The next call would exceed the run's cost limit (``--max-cost``); nothing answered is lost."""

    exit_code = 4


class UnknownPriceError(BudgetExceededError, ConfigError):
    """A cost limit is set for a model whose price is unknown: a configuration problem (exit
    code 2, as other settings errors), raised before anything is spent."""

    exit_code = 2


class ScelmoWarning(UserWarning):
    """Base class of scelmo's warnings."""


class PluginWarning(ScelmoWarning):
    """A plugin failed to load and was skipped."""


class CoverageWarning(ScelmoWarning):
    """Few of the data's genes (or little of its expression) have a gene vector."""


class EmptyCellsWarning(ScelmoWarning):
    """Some cells express no covered gene; they got a zero embedding."""
