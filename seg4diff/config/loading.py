"""Reading params.yaml: presets merged in order, --set assignments, one validation, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from seg4diff.config.params import Params
from seg4diff.errors import ConfigError


class ParamsError(ConfigError):
    """params.yaml is missing, unreadable, or has a key of the wrong name, type or value."""


def format_validation_error(error: ValidationError, source: str) -> str:
    """Returns one line per problem (one line in all for one problem): the dotted key, what is wrong, what was given."""
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<top level>"
        given = f" (got {item['input']!r})" if item["type"] not in ("missing", "extra_forbidden") else ""
        message = "unknown key: not a setting of this group" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append(f"{key}: {message}{given}")
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    return "\n  ".join([f"{source}: {len(problems)} invalid settings", *problems])


def parse_params(raw: dict, source: str = "params") -> Params:
    """Returns the validated Params for a dict as read from params.yaml; raises ParamsError naming each bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, source)) from None


PRESETS = Path(__file__).parents[1] / "presets"


def preset_names() -> list[str]:
    """Returns the names of the presets shipped in seg4diff/presets (each a YAML override file)."""
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def _read_yaml(path: Path, what: str) -> dict:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: {what} must be a mapping of params groups, got {type(raw).__name__}")
    return raw


def read_preset(name: str) -> dict:
    """Returns the overrides of preset `name` (a shipped preset's name, or the path of a YAML file)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESETS / f"{name}.yaml"
    if not path.is_file():
        shipped = ", ".join(preset_names()) or "none shipped yet"
        raise ParamsError(f"unknown preset '{name}': choose a shipped one ({shipped}) or give a YAML file's path")
    return _read_yaml(path, "a preset")


def load_params(
    path: str | Path = "params.yaml", overrides: dict | None = None, presets: list[str] | tuple[str, ...] = ()
) -> Params:
    """Returns the validated Params of a YAML file, with each preset merged over it in order, then `overrides`."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the repository root or pass its path)")
    raw = _read_yaml(path, "params")
    sources = [str(path)]
    for name in presets:
        raw = deep_merge(raw, read_preset(name))
        sources.append(f"preset {name}")
    if overrides:
        sources.append("overrides")
    return parse_params(deep_merge(raw, overrides or {}), " + ".join(sources))


SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_assignments(assignments: list[str]) -> dict:
    """Returns nested overrides from KEY=VALUE strings (dotted keys, values parsed as YAML: 0.5, [1, 2], null, text)."""
    overrides: dict = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ParamsError(f"--set {assignment!r}: expected KEY=VALUE with a dotted key, e.g. extract.sigmas=[0.5]")
        try:
            parsed = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError as error:
            raise ParamsError(f"--set {assignment!r}: the value is not valid YAML: {error}") from None
        if isinstance(parsed, str) and SCIENTIFIC.fullmatch(parsed.strip()):  # YAML 1.1 reads 3e-4 as text
            parsed = float(parsed)
        *parents, leaf = key.strip().split(".")
        node = overrides
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"--set {assignment!r}: '{part}' was already given a value")
        node[leaf] = parsed
    return overrides


def deep_merge(base: dict, override: dict) -> dict:
    """Returns `base` with `override` merged in, recursing into nested dicts; an empty mapping replaces what it
    overrides (`--set prepare.partition={}` undoes a preset's partition)."""
    merged = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and value and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if nested else value
    return merged


def merged_yaml(
    path: str | Path = "params.yaml", overrides: dict | None = None, presets: list[str] | tuple[str, ...] = ()
) -> str:
    """Returns params.yaml with the presets and overrides merged in (validated), as YAML: a params file DVC can
    track."""
    raw = _read_yaml(Path(path), "params")
    for name in presets:
        raw = deep_merge(raw, read_preset(name))
    raw = deep_merge(raw, overrides or {})
    load_params(path, overrides, presets)  # the same validation as every stage's
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
