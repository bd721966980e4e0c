"""One Prefect API per run: the server in PREFECT_API_URL, or one started here, waited for, and stopped after.

Prefect's own temporary server gives up after a fixed start-up timeout (its first start on an empty PREFECT_HOME
migrates a new database, which takes longer than that on two busy cores), and every process without an API URL
starts another one, Dask workers included. Here the server is started once, waited for as long as it is alive and
making progress, and its URL is put in the environment, so that everything started from this process (stage flows,
Dask workers, `dvc repro`'s stage commands) reports to it.

    python -m flows.server dvc repro      # one server for every stage of a `dvc repro`
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_UI_ENABLED": "false"}
START_TIMEOUT_S = 600  # generous: the server's first start migrates its database; we stop early if it dies


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _drain_to(api: str) -> None:
    """Sends the logs and events still queued for the server before it stops (else: 'Error logging to API' at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    if _healthy(api):
        for worker in (APILogWorker, EventsWorker):
            worker.drain_all(timeout=10)


def configured_api() -> str | None:
    """Returns the Prefect API URL already configured (environment or Prefect profile), or None."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


@contextlib.contextmanager
def prefect_api(start_timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """Yields the API URL that every flow, task and worker of this run uses (exported as PREFECT_API_URL)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ.update(QUIET)
    api = configured_api()
    if api:
        os.environ["PREFECT_API_URL"] = api  # workers inherit the environment, not this process's Prefect settings
        yield api
        return
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = tempfile.NamedTemporaryFile("w+", prefix="prefect-server-", suffix=".log", delete=False)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **QUIET},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _healthy(api):
            if server.poll() is not None:
                log.seek(0)
                raise RuntimeError(
                    f"the local Prefect server exited (code {server.returncode}) before it answered; "
                    f"its log ({log.name}) ends:\n{log.read()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the local Prefect server did not answer on {api} within {start_timeout_s:.0f} s; log: {log.name}"
                )
            time.sleep(0.5)
        os.environ["PREFECT_API_URL"] = api
        with temporary_settings(updates={PREFECT_API_URL: api}):
            yield api
    finally:
        _drain_to(api)
        os.environ.pop("PREFECT_API_URL", None)
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        os.unlink(log.name)


def main(argv: list[str] | None = None) -> int:
    """Runs a command (e.g. `dvc repro`) with one Prefect server for all of it; returns its exit code."""
    command = sys.argv[1:] if argv is None else argv
    if not command or command[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if command else 2
    with prefect_api() as api:
        print(f"Prefect API for this run: {api}", file=sys.stderr)
        return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
