"""Retries only for failures a second try can fix; configuration and data errors fail at once."""

import pytest

from seg4diff.errors import ConfigError, DataError
from tasks.retry import RETRY_TRANSIENT, is_transient


def _raised_from(outer: type, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as cause:
            raise outer("wrapped") from cause
    except BaseException as error:
        return error


def test_transient_and_permanent_failures():
    assert is_transient(ConnectionResetError("peer went away")) and is_transient(TimeoutError())
    assert is_transient(_raised_from(RuntimeError, OSError("disk hiccup")))  # a wrapped I/O error
    assert is_transient(type("KilledWorker", (Exception,), {})("worker died"))
    for permanent in (
        ConfigError("extract.max_tokens too small"),
        DataError("corrupt image"),
        FileNotFoundError("x"),
        ValueError("bad"),
        KeyError("k"),
        RuntimeError("size mismatch"),
    ):
        assert not is_transient(permanent), permanent
    assert not is_transient(_raised_from(OSError, ConfigError("a setting")))  # permanent anywhere in the chain wins


def test_prefect_retries_io_errors_and_not_config_errors(prefect_harness):
    from prefect import flow, task

    attempts = {"io": 0, "config": 0}

    @task(**{**RETRY_TRANSIENT, "retry_delay_seconds": 0})
    def flaky(kind: str) -> str:
        attempts[kind] += 1
        if kind == "io" and attempts[kind] < 3:
            raise ConnectionResetError("lost the worker's connection")
        if kind == "config":
            raise ConfigError("sample val/0: 20 tokens to keep but extract.max_tokens is 8: raise extract.max_tokens")
        return "done"

    @flow
    def run(kind: str) -> str:
        return flaky(kind)

    assert run("io") == "done" and attempts["io"] == 3  # two retries
    with pytest.raises(ConfigError, match="raise extract.max_tokens"):
        run("config")
    assert attempts["config"] == 1  # never retried
