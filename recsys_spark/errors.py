"""Errors that the command line turns into one clear line (no stack trace)."""


class RecsysError(Exception):
    """Base class: a problem with the user's input, config or data, not a bug."""


class ConfigError(RecsysError):
    """An unknown key, a value of the wrong type, or an unreadable config file."""


class InputError(RecsysError):
    """A missing input path or a stage's input that does not meet its contract."""


class DataQualityError(RecsysError):
    """An invariant on the data failed: counts that do not reconcile, a leak, a drift."""
