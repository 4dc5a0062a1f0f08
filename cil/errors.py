"""Errors a user can fix, reported as one line by run.py (never a JAX stack trace).

      raise ConfigError("unknown strategy 'replai'; choose one of: finetune, joint")

run.py catches ``CilError``, prints ``error: <message>`` and exits with status 2. A ``RunError``
ends one (strategy, seed) run; a grid (cil/sweep.py) runs its other cells before reporting it.
"""


class CilError(Exception):
    """Base class: a problem with the user's config or data, not a bug."""


class ConfigError(CilError):
    """The config names something that does not exist or does not fit together."""


class DataError(CilError):
    """The data is missing, empty or malformed."""


class WorkdirError(CilError):
    """The workdir cannot be written: a file in its place, no permission, a full disk."""


class RunError(CilError):
    """One run cannot go on; it writes no summary line."""


class BudgetError(RunError):
    """A strategy kept more memory than the run's budget allows (PROTOCOL.md)."""


class DivergenceError(RunError):
    """Training produced a loss or parameters that are not finite (NaN or infinity)."""
