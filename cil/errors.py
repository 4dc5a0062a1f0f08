"""Errors a user can fix, reported as one line by run.py (never a JAX stack trace).

      raise ConfigError("unknown strategy 'replai'; choose one of: finetune, joint")

run.py catches ``CilError``, prints ``error: <message>`` and exits with status 2.
"""


class CilError(Exception):
    """Base class: a problem with the user's config or data, not a bug."""


class ConfigError(CilError):
    """The config names something that does not exist or does not fit together."""


class DataError(CilError):
    """The data is missing, empty or malformed."""


class BudgetError(CilError):
    """A strategy kept more memory than the run's budget allows (PROTOCOL.md)."""
