"""The exception tree of flsuite.

    FlsuiteError                 base of everything flsuite raises on purpose
    ├── UserError                bad input from a person: the CLI prints the message and exits 2
    │   ├── ConfigError          a config value, key or group option that is not allowed
    │   ├── DataError            a dataset, CSV file or partition that cannot be used
    │   └── PlanError            a privacy or federation plan that cannot be carried out
    ├── BudgetExhausted          a site refused training that would pass its privacy cap
    ├── StudyAborted             a study that cannot go on (too few sites left, ...)
    └── IntegrityError           something that should verify does not (terse on purpose)

Messages say what is wrong and what to do next; integrity failures name the entry and
the check that failed, nothing more.
"""

from __future__ import annotations


class FlsuiteError(Exception):
    """Base class of every error flsuite raises on purpose."""


class UserError(FlsuiteError):
    """Bad input from a person; the CLI prints the message without a traceback and exits 2."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration value, key or group option that is not allowed."""


class DataError(UserError):
    """A dataset, CSV file or partitioning that cannot be used."""


class PlanError(UserError):
    """A privacy or federation plan that cannot be carried out as configured."""


class BudgetExhausted(FlsuiteError):
    """A site refused a request because it would spend past the site's privacy cap."""

    def __init__(self, message: str, *, remaining_epsilon: float) -> None:
        super().__init__(message)
        self.remaining_epsilon = remaining_epsilon


class StudyAborted(FlsuiteError):
    """A study stopped before its planned end; outputs so far are written."""

    exit_code = 3


class IntegrityError(FlsuiteError):
    """A signature, hash or chain that should verify does not."""

    exit_code = 1
