"""`python -m seg4diff.config`: prints params.yaml with presets and --set overrides merged in (a params file for
DVC)."""

from __future__ import annotations

import argparse
import sys

from seg4diff.config.loading import merged_yaml, parse_assignments
from seg4diff.errors import ConfigError


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m seg4diff.config",
        description="Prints params.yaml with presets and --set overrides merged in (for DVC).",
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--preset", action="append", default=[])
    parser.add_argument("--set", action="append", default=[], dest="assignments")
    args = parser.parse_args()
    try:
        sys.stdout.write(merged_yaml(args.params, parse_assignments(args.assignments), args.preset))
    except ConfigError as error:
        sys.exit(f"{parser.prog}: {error}")


if __name__ == "__main__":
    main()
