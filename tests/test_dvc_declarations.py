"""dvc.yaml declares what each stage reads, so that `dvc repro` never calls stale outputs up to date:
every repository module its flow imports (transitively) is a dep, and every params group or key it reads is a param.
Also: params.yaml spells out the defaults of seg4diff/config.py, never different ones (one home for each default)."""

import ast
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel

from flows.stages import REGISTRY
from seg4diff.config import Params

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("seg4diff", "tasks", "flows")
GROUPS = set(Params.model_fields)
# where and how a stage runs, never what it computes: extraction is bit-identical whatever the workers
NOT_OUTPUT_AFFECTING = {"tracking", "orchestration"}
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES and _module_file(name)}


def import_closure(module: str) -> set[Path]:
    """Returns the repository files `module` imports, transitively (packages' __init__ files included)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:k]) for k in range(1, len(parts)) if _module_file(".".join(parts[:k]))]
        todo += _imports(_module_file(name))
    return {_module_file(name).relative_to(ROOT) for name in seen}


def params_read(path: Path) -> set[str]:
    """Returns `group` or `group.key` for each `params.<group>[.<key>]` in an orchestration module (whole group when
    the group object itself is passed on or a method of it is called)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    read = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "params"
            and node.attr in GROUPS
        ):
            parent = parents.get(node)
            group = Params.model_fields[node.attr].annotation
            keyed = isinstance(parent, ast.Attribute) and parent.attr in group.model_fields
            if not keyed:
                read.add(node.attr)
                continue
            # a nested group (data.shapes, ShapesParams | None): one level further
            nested = [
                t for t in typing.get_args(group.model_fields[parent.attr].annotation) if hasattr(t, "model_fields")
            ]
            grandparent = parents.get(parent)
            deeper = isinstance(grandparent, ast.Attribute) and any(grandparent.attr in t.model_fields for t in nested)
            read.add(f"{node.attr}.{parent.attr}.{grandparent.attr}" if deeper else f"{node.attr}.{parent.attr}")
    return read


def _entries(items) -> list[str]:
    return [next(iter(item)) if isinstance(item, dict) else item for item in items or []]


def test_dvc_yaml_declares_the_registry_stages_in_order_with_their_metrics_files():
    assert list(STAGES) == [stage.name for stage in REGISTRY]
    for stage in REGISTRY:
        spec = STAGES[stage.name]
        assert spec["cmd"] == f"python -m flows.{stage.name}"
        assert stage.flow().name == stage.name  # the flow, the DVC stage and the MLflow run share the word
        if stage.metrics:
            assert stage.metrics in _entries(spec.get("metrics")), stage.name


def test_every_stage_depends_on_every_module_its_flow_imports():
    missing = {}
    for stage, spec in STAGES.items():
        deps = [Path(d) for d in _entries(spec["deps"])]
        uncovered = [
            str(f) for f in import_closure(f"flows.{stage}") if not any(f == d or d in f.parents for d in deps)
        ]
        if uncovered:
            missing[stage] = sorted(uncovered)
    assert not missing, f"dvc.yaml deps miss modules their flows import: {missing}"


def test_every_stage_declares_every_params_group_it_reads():
    missing = {}
    for stage, spec in STAGES.items():
        declared = set(_entries(spec.get("params")))
        modules = [f for f in import_closure(f"flows.{stage}") if f.parts[0] in ("flows", "tasks")]
        read = set().union(*(params_read(ROOT / f) for f in modules))
        undeclared = {
            r
            for r in read
            if r.split(".")[0] not in NOT_OUTPUT_AFFECTING
            and not any(".".join(r.split(".")[:k]) in declared for k in range(1, r.count(".") + 2))
        }
        if undeclared:
            missing[stage] = sorted(undeclared)
    assert not missing, f"dvc.yaml params miss what the stages read: {missing}"


def test_the_checks_see_what_they_claim():
    """The import closure and the params scan find known facts (so that an empty result cannot pass the tests above)."""
    evaluate = import_closure("flows.evaluate")
    assert {
        Path("seg4diff/evaluation/fidelity.py"),
        Path("seg4diff/evaluation/metrics.py"),
        Path("tasks/retry.py"),
    } <= evaluate
    # each stage reads what its job needs: no fine-tuning code in the causal test, no perturbation or explorer in MAGNET
    causal, finetune = import_closure("flows.causal"), import_closure("flows.finetune")
    assert not {f for f in causal if f.parts[:2] == ("seg4diff", "training")}
    assert Path("seg4diff/capture/perturb.py") in causal and Path("seg4diff/capture/perturb.py") not in finetune
    assert not {Path("seg4diff/evaluation/causal.py"), Path("seg4diff/reporting/explorer.py")} & finetune
    assert "data.shapes.design" in params_read(ROOT / "tasks/causal.py")  # a nested group's key, three levels deep
    assert {"select.output", "prompt", "evaluate"} <= params_read(ROOT / "tasks/evaluate.py") | params_read(
        ROOT / "flows/evaluate.py"
    )


def test_params_yaml_spells_out_the_defaults_and_no_other_values():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    differing = []

    def group_model(annotation):  # a params group, or an optional one (ShapesParams | None)
        options = typing.get_args(annotation) or (annotation,)
        return next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)

    def walk(model, values, prefix):
        for name, field in model.model_fields.items():
            if name not in values:
                continue
            nested = group_model(field.annotation)
            if nested is not None and isinstance(values[name], dict):
                walk(nested, values[name], f"{prefix}{name}.")
            elif not field.is_required():
                default = list(field.default) if isinstance(field.default, tuple) else field.default
                if default != values[name]:
                    differing.append(f"{prefix}{name}: default {default!r}, params.yaml {values[name]!r}")

    walk(Params, raw, "")
    assert not differing, differing
