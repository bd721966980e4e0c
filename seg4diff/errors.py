"""Errors that no retry can fix: a wrong setting or a wrong input. Each message names the setting or file and the fix.

Orchestration retries only what can succeed on a second try (I/O, a lost worker); these fail at once, in one line.
"""


class ConfigError(ValueError):
    """A setting (params.yaml, a preset, a --set override) or a model/adapter choice is wrong."""


class DataError(ValueError):
    """An input file or sample is missing, corrupt or inconsistent."""


class ResourceError(RuntimeError):
    """The machine lacks what the run needs (disk space, a device): no retry helps until the user frees or adds it."""
