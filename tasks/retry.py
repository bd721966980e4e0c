"""Which task failures are worth a retry: transient ones (I/O, a lost or unreachable worker), never a wrong setting
or a wrong input, which fail at once with their one-line message."""

from __future__ import annotations

import errno

from prefect.tasks import exponential_backoff

from seg4diff.errors import ConfigError, DataError, ResourceError

PERMANENT_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # a full disk or quota, a read-only file system
TRANSIENT_NAMES = {"KilledWorker", "CommClosedError", "StreamClosedError"}  # distributed's: the worker went away


def is_transient(error: BaseException | None) -> bool:
    """True when `error` (or an exception it was raised from) can go away on a second try, and none in its chain is
    permanent."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    if any(isinstance(e, (ConfigError, DataError, ResourceError, *PERMANENT_OS_ERRORS)) for e in chain):
        return False
    if any(isinstance(e, OSError) and e.errno in PERMANENT_ERRNOS for e in chain):
        return False
    return any(
        isinstance(e, (OSError, TimeoutError, MemoryError)) or type(e).__name__ in TRANSIENT_NAMES for e in chain
    )


def retry_transient(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: retry only transient failures."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None:
        try:
            error = state.result(raise_on_failure=False)
        except Exception as raised:  # noqa: BLE001 - whatever the state holds, it decides the retry
            error = raised
    return is_transient(error if isinstance(error, BaseException) else None)


RETRY_TRANSIENT = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=5),
    "retry_condition_fn": retry_transient,
}
