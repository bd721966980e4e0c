"""The command line every flow shares: `python -m flows.<stage> [--params FILE] [--preset NAME]… [--set KEY=VALUE]…`.

Settings are params.yaml, then each preset in order, then each --set, validated by the same pydantic model as
`dvc repro` uses; a wrong key, value or preset stops the command before anything runs, in one line. DVC stays the
reproducible path (it records params, code and outputs in dvc.lock); this is for ad-hoc runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from seg4diff.config import check_stage, load_params, parse_assignments, preset_names
from seg4diff.errors import ConfigError, DataError, ResourceError

KNOWN_ERRORS = (ConfigError, DataError, ResourceError)  # their message names the problem and the fix


class WithoutTracebackForKnownErrors(logging.Filter):
    """Drops the traceback Prefect logs with a known error (its one line stays): a wrong setting, a bad input or a
    full disk is told in one line, not in a hundred lines of engine frames."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KNOWN_ERRORS):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_known_tracebacks() -> None:
    """Installs WithoutTracebackForKnownErrors on Prefect's run loggers (once)."""
    for name in ("prefect.task_runs", "prefect.flow_runs", "prefect.flow_engine", "prefect.task_engine"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, WithoutTracebackForKnownErrors) for f in logger.filters):
            logger.addFilter(WithoutTracebackForKnownErrors())


def parser_for(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m flows.{name}",
        description=description,
        epilog="Presets: "
        + (", ".join(preset_names()) or "none shipped yet; give a YAML file")
        + ". The Prefect server is the one in PREFECT_API_URL, else one started for this command.",
    )
    parser.add_argument("--params", default="params.yaml", metavar="FILE", help="params file (default: params.yaml)")
    parser.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="NAME",
        help="YAML overrides merged in order onto the params file: a shipped preset's name or a file (repeatable)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="assignments",
        help="one setting, dotted key, value parsed as YAML, e.g. --set extract.sigmas='[0.5]' (repeatable)",
    )
    return parser


def run(
    name: str,
    flow: Callable,
    argv: list[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    flow_kwargs: Callable[[argparse.Namespace], dict] | None = None,
) -> object:
    """Parses the command line, validates the settings, and runs `flow` against one Prefect API; returns its result."""
    from flows.runners import for_stage
    from flows.server import prefect_api
    from flows.stages import STAGES

    parser = parser_for(name, (sys.modules[flow.fn.__module__].__doc__ or name).strip().splitlines()[0])
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    try:
        overrides = parse_assignments(args.assignments)
        params = load_params(args.params, overrides, args.preset)  # fail here, in one line, not inside a flow run
        if name in STAGES:
            check_stage(params, name)
    except ConfigError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    kwargs = {"params_path": args.params, "presets": args.preset or None, "overrides": overrides or None}
    quiet_known_tracebacks()
    with prefect_api():
        return for_stage(flow, params)(**kwargs, **(flow_kwargs(args) if flow_kwargs else {}))


def main(name: str, flow: Callable, extra: Callable | None = None, flow_kwargs: Callable | None = None) -> object:
    """Entry point of `python -m flows.<name>`; a configuration or data error exits 1 with its one line."""
    try:
        return run(name, flow, extra=extra, flow_kwargs=flow_kwargs)
    except KNOWN_ERRORS as error:
        sys.exit(f"{name}: {error}")
