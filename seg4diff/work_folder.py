"""Work folders of long runs (training, the causal stage's generations): what makes a folder the run of one set of
settings, so that an interrupted run resumes there and a run of other settings is moved aside, never deleted."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from seg4diff.ownership import MARKER, check_replaceable, mark

SETTINGS = "config.json"  # the settings of the run a work folder holds
PREVIOUS = "previous-"  # runs of other settings, moved aside inside the work folder


@dataclass(frozen=True)
class WorkFolder:
    """Whose work folder: the setting that names it (in every refusal) and what its run is called."""

    setting: str
    run: str


def claim_work_dir(work_dir: Path, settings: str, work: WorkFolder) -> str:
    """Makes `work_dir` seg4diff's work folder of `work` (fine-tuning, pretraining, a causal run) for `settings` (a
    JSON text); returns one line saying what happened.

    A folder seg4diff did not write is refused (ConfigError naming work.setting, e.g. finetune.work_dir). The run of
    other settings it holds is moved aside to `previous-<hash of its settings>` inside it, never deleted (it may have
    cost hours of GPU); one moved aside earlier for these settings is moved back and resumed."""
    work_dir = Path(work_dir)
    check_replaceable(work_dir, work.setting)
    mark(work_dir, f"{work.run} work folder")
    recorded = work_dir / SETTINGS
    if recorded.is_file() and recorded.read_text() == settings:
        return f"{work.setting} {work_dir}: continuing the run of the same settings there"
    said = []
    if recorded.is_file():
        previous = _previous(work_dir, recorded.read_text())
        _move_run(work_dir, previous)
        said.append(f"held a run of other settings: moved it to {previous} (delete that to free disk)")
    earlier = _previous(work_dir, settings)
    if (earlier / SETTINGS).is_file() and (earlier / SETTINGS).read_text() == settings:
        _move_run(earlier, work_dir)
        earlier.rmdir()
        said.append(f"resuming the run of these settings moved aside earlier to {earlier}")
    else:
        recorded.write_text(settings)
        said.append("starting a new run")
    return f"{work.setting} {work_dir}: " + "; ".join(said)


def _previous(work_dir: Path, settings: str) -> Path:
    """Returns where a run of `settings` is moved aside inside `work_dir`."""
    return work_dir / f"{PREVIOUS}{hashlib.sha256(settings.encode()).hexdigest()[:16]}"


def _move_run(source: Path, target: Path) -> None:
    """Moves a run's files (not the marker, not runs moved aside) from `source` into `target`; the settings last, so
    that a move interrupted half-way is finished by the next call."""
    target.mkdir(exist_ok=True)
    entries = [p for p in source.iterdir() if p.name != MARKER and not p.name.startswith(PREVIOUS)]
    for entry in sorted(entries, key=lambda p: p.name == SETTINGS):
        entry.rename(target / entry.name)
