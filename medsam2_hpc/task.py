"""Task (one training run, fully resolved) and RunDir (its directory contract).

Every front end (jobs.yaml, sbatch script, ``train.py``, Medical-SAM2-compatible commands) builds a
:class:`Task`; :func:`medsam2_hpc.runner.run_task` runs it into a :class:`RunDir`. The run
directory path is a pure function of the task, so a requeued job resumes in place.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .atomic import read_json, write_json, write_text
from .dataid import data_identity
from .errors import InputError
from .inputs import check_hparams, check_seed, check_text, parse_yaml, safe_name
from .jobenv import job_identity
from .registry import dataset_names, model_names

__all__ = ["PROMPTS", "STATES", "Task", "RunDir"]

PROMPTS = ("bbox", "click", "mask", "none")
STATES = ("pending", "running", "completed", "failed", "preempted")


@dataclass(frozen=True)
class Task:
    """One run: a model variant trained on one dataset with one seed and hyper-parameters.

    ``hparams`` holds trainer settings (epochs, batch_size, lr, image_size, ...); each
    trainer validates the keys it reads. ``name`` overrides the generated task id (the
    Medical-SAM2-compatible commands use ``<exp_name>_<timestamp>``).
    """

    model: str
    variant: str
    dataset: str
    data_path: str
    output_root: str = "runs"
    study: str = ""
    seed: int = 0
    prompt: str = "none"
    hparams: dict[str, Any] = field(default_factory=dict)
    profile: str = "default"
    name: str | None = None

    def __post_init__(self) -> None:
        """Every front end builds a Task, so the values that become paths are checked here, once."""
        if isinstance(self.dataset, str):
            object.__setattr__(self, "dataset", self.dataset.lower())
        if self.model not in model_names():
            raise InputError(f"model {self.model!r} is not one of {', '.join(model_names())}")
        if self.dataset not in dataset_names():
            raise InputError(f"dataset {self.dataset!r} is not one of {', '.join(dataset_names())}")
        if self.prompt not in PROMPTS:
            raise InputError(f"prompt {self.prompt!r} is not one of {', '.join(PROMPTS)}")
        safe_name(self.variant, "variant")
        safe_name(self.profile, "profile")
        if self.study:
            safe_name(self.study, "study")
        if self.name is not None:
            safe_name(self.name, "name")
        for key in ("data_path", "output_root"):
            if not isinstance(getattr(self, key), (str, os.PathLike)) or not str(getattr(self, key)):
                raise InputError(f"{key}: expected a path, got {getattr(self, key)!r}")
            check_text(os.fspath(getattr(self, key)), key)
        check_seed(self.seed, "seed")
        if not isinstance(self.hparams, dict):
            raise InputError(f"hparams: expected a mapping, got {type(self.hparams).__name__}")
        check_hparams(self.hparams)

    @functools.cached_property
    def task_id(self) -> str:
        """Readable and deterministic: the same task always maps to the same directory.

        The data directory enters by its name and content (:func:`medsam2_hpc.dataid.data_identity`),
        not its location, and so do hparams that name files inside it: a data set moved to
        scratch keeps its runs. 64 bits of SHA-256: the chance that two of 10^7 tasks share an id
        is below 10^-5 (and ``RunDir.claim`` refuses a directory that holds another task anyway).
        Computed once per task: submit and status look it up for thousands of tasks."""
        if self.name:
            return self.name
        key = json.dumps(
            [self.model, self.variant, self.dataset, *data_identity(self.data_path), self.prompt, self.seed,
             self._portable_hparams()],
            sort_keys=True, default=str,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return f"{self.model}_{self.variant}_{self.dataset}_s{self.seed}_{digest}"

    def _portable_hparams(self) -> dict[str, Any]:
        """hparams with a file inside the data directory (a split file) named relative to it."""
        data = os.path.abspath(os.fspath(self.data_path)) + os.sep
        return {k: "<data>/" + v[len(data):] if isinstance(v, str) and v.startswith(data) else v
                for k, v in self.hparams.items()}

    @functools.cached_property
    def run_dir(self) -> RunDir:
        return RunDir(Path(self.output_root, self.study, self.task_id))  # one parse: thousands in submit

    def hp(self, key: str, default: Any) -> Any:
        return self.hparams.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "task") -> Task:
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a mapping of task fields, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise InputError(f"{source}: unknown key(s) {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:  # a required field is missing
            raise InputError(f"{source}: {exc}") from None
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> Task:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
        return cls.from_dict(parse_yaml(text, str(path)) or {}, source=str(path))

    def identity(self) -> dict[str, Any]:
        """What makes two tasks the same run (where it is written, how it is launched and where
        its data directory lives aside: its name stays, its content is in the id)."""
        out = self.to_dict()
        for key in ("output_root", "profile", "study", "name"):
            out.pop(key)
        out["data_path"] = os.path.basename(os.path.abspath(os.fspath(self.data_path)))
        out["hparams"] = self._portable_hparams()
        return out


class RunDir:
    """The directory of one run (ARCHITECTURE.md section 3)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    task_yaml = property(lambda self: self.path / "task.yaml")
    status_json = property(lambda self: self.path / "status.json")
    metrics_json = property(lambda self: self.path / "metrics.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_ckpt = property(lambda self: self.path / "checkpoints" / "last.pt")
    best_ckpt = property(lambda self: self.path / "checkpoints" / "best.pt")
    logs = property(lambda self: self.path / "logs")
    predictions = property(lambda self: self.path / "predictions")
    vis = property(lambda self: self.path / "vis")

    def claim(self, task: Task) -> None:
        """Refuse a directory whose task.yaml names another task (a reused --name, an id collision)."""
        if not self.task_yaml.is_file():
            return
        other = Task.from_yaml(self.task_yaml)
        mine, theirs = task.identity(), other.identity()
        diff = [k for k in mine if mine[k] != theirs.get(k)]
        if diff:
            key = diff[0]
            raise InputError(f"{self.path}: holds another task ({key} {theirs.get(key)!r}, not "
                             f"{mine[key]!r}); choose another name or output root")

    def prepare(self, task: Task) -> RunDir:
        for sub in (self.checkpoints, self.logs, self.predictions, self.vis):
            sub.mkdir(parents=True, exist_ok=True)
        write_text(self.task_yaml, yaml.safe_dump(task.to_dict(), sort_keys=False))
        return self

    # status.json -----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        try:  # one open, no stat first: status reads 10,000 of these
            return read_json(self.status_json)
        except (FileNotFoundError, NotADirectoryError):
            return {"state": "pending", "attempts": 0}
        except (OSError, ValueError):
            return {"state": "unknown", "attempts": 0}

    def update_status(self, **changes: Any) -> dict[str, Any]:
        state = changes.get("state")
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        status = {**self.status(), **changes}
        write_json(self.status_json, status)
        return status

    def mark_running(self) -> dict[str, Any]:
        ident = job_identity()
        prev = self.status()
        return self.update_status(
            state="running",
            attempts=int(prev.get("attempts", 0)) + 1,
            host=ident.host,
            slurm_job_id=ident.job_id,
            slurm_array_job_id=ident.array_job_id,
            slurm_array_task_id=ident.array_task_id,
            started_at=prev.get("started_at") or _now(),
            attempt_started_at=_now(),
            ended_at=None,
            error=None,
        )

    def mark_completed(self) -> dict[str, Any]:
        return self.update_status(state="completed", ended_at=_now())

    def mark_preempted(self) -> dict[str, Any]:
        return self.update_status(state="preempted", ended_at=_now())

    def mark_failed(self, exc: BaseException, reason: str | None = None) -> dict[str, Any]:
        """The traceback's tail; ``reason``, when given, is its last line (what ``status`` shows)."""
        tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
        return self.update_status(state="failed", ended_at=_now(), error=tail + reason if reason else tail)

    # metrics.json ----------------------------------------------------------------
    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        return write_json(self.metrics_json, metrics)

    def metrics(self) -> dict[str, Any] | None:
        if not self.metrics_json.exists():
            return None
        try:
            data = read_json(self.metrics_json)
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.metrics_json}: unreadable ({type(exc).__name__}); delete it to "
                             "evaluate the run again") from None
        if not isinstance(data, dict):
            raise InputError(f"{self.metrics_json}: expected a JSON object; delete it to evaluate again")
        return data


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
