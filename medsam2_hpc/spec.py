"""jobs.yaml: schema, validation and sweep expansion into :class:`~medsam2_hpc.task.Task` lists.

A jobs file holds shared settings (output root, executor, container, resource profiles,
defaults) and one or more ``studies``; each study may override the shared settings and
lists ``experiments`` (model x variants x dataset x hyper-parameter sweep x seeds).
``load(path, study)`` validates the *whole* file and reports every problem at once, each with
its key path, YAML line and near-miss suggestion, so a user fixes a file in one round.
Paths (output root, data paths, image, binds, container env values and the path-valued
hparams in :data:`PATH_HPARAMS`, checkpoints included) expand ``$VAR`` / ``${VAR}`` from the
submitting environment (an unset variable is an error, never a literal ``$VAR`` folder) and
``~``, then resolve against the directory of the jobs file, so jobs see the same absolute paths
whatever their working directory.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError
from .inputs import MAX_TASKS, NAME, compose_yaml, control_chars, read_yaml
from .options import suggest
from .registry import dataset_names, model_kind, model_names
from .task import PROMPTS, Task

__all__ = ["RUNTIMES", "PATH_HPARAMS", "Bind", "ContainerSpec", "Profile", "Study", "load", "from_dict"]

RUNTIMES = ("apptainer", "singularity", "none")
GPU_SBATCH_KEYS = ("gres", "gpus", "gpus_per_node")  # sbatch options that ask for GPUs themselves
# hparams that name files: expanded and resolved against the jobs file like every other path
PATH_HPARAMS = ("sam_ckpt", "pretrain", "pretrained_weights", "weights")
_NOT_A_PATH = ("", "none", "None", "random")  # sam_ckpt: 'none' means random weights
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")

FILE_KEYS = ("version", "output_root", "executor", "container", "profiles", "defaults", "studies",
             "default_study")
STUDY_KEYS = ("description", "output_root", "executor", "container", "profiles", "defaults", "experiments")
DEFAULT_KEYS = ("profile", "seeds", "hparams", "sweep")
EXPERIMENT_KEYS = ("name", "model", "variants", "dataset", "data_path", "prompt", "hparams", "sweep",
                   "seeds", "profile")
CONTAINER_KEYS = ("image", "runtime", "binds", "nv", "env")
# What reaches an "#SBATCH --key=value" line: sbatch splits those lines at white space and reads
# quotes, so a value is one word of ordinary characters and a key is a long option name.
_SLURM_VALUE = re.compile(r"[A-Za-z0-9_.,:=@%&|!*+/\[\]()-]+")
_SLURM_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_TIME_MIN = 365 * 24 * 60  # Slurm counts minutes in 32 bits; a year is beyond any partition's limit
PROFILE_KEYS = ("partition", "account", "qos", "gpus", "cpus", "mem", "time", "constraint", "nodes",
                "tasks_per_node", "array_parallelism", "max_array_size", "signal_delay_s", "max_requeues",
                "setup", "sbatch")


@dataclass(frozen=True)
class Bind:
    """One bind mount ``src:dst:mode`` (mode ``ro`` or ``rw``) for the container runtime."""

    src: str
    dst: str
    mode: str = "rw"

    def __str__(self) -> str:
        return f"{self.src}:{self.dst}:{self.mode}"


@dataclass(frozen=True)
class ContainerSpec:
    """Where the job's python runs: ``runtime`` none means on the host, else ``image`` via apptainer.

    ``nv`` allows ``--nv``; the launcher asks for it only when the profile has GPUs. ``env``
    is set inside the container (the launcher adds the writable cache variables).
    """

    image: str | None = None
    runtime: str = "none"
    binds: tuple[Bind, ...] = ()
    nv: bool = True
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.runtime != "none"


@dataclass(frozen=True)
class Profile:
    """A Slurm resource request; all tasks of one profile go into one job array."""

    name: str
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus: int = 0  # per node
    cpus: int = 1  # per task
    mem_gb: float | None = None  # per node
    time_min: int = 60
    constraint: str | None = None
    nodes: int = 1
    tasks_per_node: int | None = None  # default: one task per GPU (DDP), else 1
    array_parallelism: int = 32
    signal_delay_s: int = 90
    max_requeues: int = 3
    max_array_size: int | None = None  # elements per array; default: the cluster's MaxArraySize
    setup: tuple[str, ...] = ()
    sbatch: Mapping[str, str | int | bool] = field(default_factory=dict)

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(self.gpus, 1)


@dataclass(frozen=True)
class Study:
    """One validated study: its settings and its tasks, in file order (experiment x variant x
    sweep point x seed); the expansion happens once, at validation."""

    name: str
    base_dir: Path  # the jobs file's directory: relative paths were resolved against it
    output_root: Path
    executor: str
    container: ContainerSpec
    profiles: Mapping[str, Profile]
    tasks: tuple[Task, ...]
    origins: Mapping[str, str] = field(default_factory=dict)  # task id -> "key path (line N)"

    @property
    def study_dir(self) -> Path:
        return self.output_root / self.name


# ---------------------------------------------------------------------------------------------
# Problem collection with YAML line numbers


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, str) and control_chars(part) is not None:
            part = repr(part)  # a key with a newline must not break the one-line message
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _line_map(node: yaml.Node | None, path: tuple[Any, ...], lines: dict, dupes: list) -> dict:
    """Map key paths to 1-based YAML lines; note duplicate keys, which safe_load drops silently."""
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value in node.value:
            key = key_node.value
            sub = (*path, key)
            if key in seen:
                dupes.append(sub)
            seen.add(key)
            lines[sub] = key_node.start_mark.line + 1
            _line_map(value, sub, lines, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            lines[(*path, i)] = value.start_mark.line + 1
            _line_map(value, (*path, i), lines, dupes)
    return lines


class _Checker:
    """Collects every problem (submitit's auto.py habit) and raises one InputError at the end."""

    def __init__(self, source: str, lines: Mapping[tuple[Any, ...], int] | None = None) -> None:
        self.source = source
        self.lines = lines or {}
        self.problems: list[str] = []

    def where(self, path: tuple[Any, ...]) -> str:
        """``key.path (line N)``: how problems and task origins name a place in the file."""
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = f" (line {self.lines[probe]})" if probe in self.lines else ""
        return f"{_dotted(path)}{line}"

    def add(self, path: tuple[Any, ...], message: str) -> None:
        self.problems.append(f"{self.where(path)}: {message}")

    def expand(self, value: str, path: tuple[Any, ...]) -> str:
        """``$VAR`` and ``${VAR}`` from the submitting environment; an unset one is a problem."""
        def one(match: re.Match) -> str:
            name = match.group(1) or match.group(2)
            if name not in os.environ:
                self.add(path, f"${name} is not set in the environment")
                return match.group(0)
            return os.environ[name]

        return _VAR.sub(one, value)

    def path(self, value: str, path: tuple[Any, ...], base: Path) -> str:
        """A path as written in the file: variables and ``~`` expanded, relative to ``base``."""
        return str((base / os.path.expanduser(self.expand(value, path))).resolve())

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        self.problems = list(dict.fromkeys(self.problems))  # a shared section is checked per study
        count = len(self.problems)
        head = f"{self.source}: {count} problems: " if count > 1 else f"{self.source}: "
        raise InputError(head + "; ".join(self.problems))

    # typed readers: each returns a usable value (or the default) and records what is wrong
    def mapping(self, value: Any, path: tuple[Any, ...], allowed: Iterable[str] | None = None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.add(path, f"expected a mapping, got {type(value).__name__}")
            return {}
        for key in value:
            if not isinstance(key, str):
                self.add((*path, key), f"keys must be strings, got {type(key).__name__} {key!r}")
            elif allowed is not None and key not in allowed:
                self.add((*path, key), f"unknown key {key!r}{suggest(key, allowed)}")
        return value

    def string(self, value: Any, path: tuple[Any, ...], default: str | None = None) -> str | None:
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            self.add(path, f"expected a non-empty string, got {value!r}")
            return default
        if (bad := control_chars(value)) is not None:
            self.add(path, f"control character {bad!r} is not allowed")
            return default
        return value

    def slurm_word(self, value: Any, path: tuple[Any, ...]) -> str | None:
        """A value written into an #SBATCH line: one word, no quotes, '#', '$' or white space."""
        text = self.string(value, path)
        if text is not None and not _SLURM_VALUE.fullmatch(text):
            self.add(path, f"{text[:40]!r} is not a Slurm value (one word of letters, digits and "
                           "_.,:=@%&|!*+/[]()-)")
            return None
        return text

    def name(self, value: Any, path: tuple[Any, ...], what: str) -> str | None:
        """A name that becomes a directory or job name (inputs.NAME, never '/' or '..')."""
        if not isinstance(value, str) or not NAME.fullmatch(value) or ".." in value:
            self.add(path, f"{str(value)[:40]!r}: a {what} is a directory name: letters, digits, '.', '_', "
                           "'+' or '-', starting with a letter or digit, no '..'")
            return None
        return value

    def control(self, data: Any, path: tuple[Any, ...]) -> None:
        """Control characters in any key or string of the document, each reported where it is."""
        if isinstance(data, dict):
            for key, value in data.items():
                if isinstance(key, str) and (bad := control_chars(key)) is not None:
                    self.add((*path, key), f"control character {bad!r} in a key is not allowed")
                self.control(value, (*path, key))
        elif isinstance(data, list):
            for i, value in enumerate(data):
                self.control(value, (*path, i))
        elif isinstance(data, str) and (bad := control_chars(data)) is not None:
            self.add(path, f"control character {bad!r} is not allowed")

    def integer(self, value: Any, path: tuple[Any, ...], default: int, minimum: int = 0) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(path, f"expected an integer, got {type(value).__name__} {value!r}")
            return default
        if value < minimum:
            self.add(path, f"must be >= {minimum}, got {value}")
            return default
        return value

    def boolean(self, value: Any, path: tuple[Any, ...], default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.add(path, f"expected true or false, got {value!r}")
            return default
        return value

    def choice(self, value: Any, path: tuple[Any, ...], choices: Iterable[str],
               default: str | None) -> str | None:
        choices = tuple(choices)
        if value is None:
            return default
        if value not in choices:
            self.add(path, f"{value!r} is not one of {', '.join(choices)}{suggest(str(value), choices)}")
            return default
        return value

    def items(self, value: Any, path: tuple[Any, ...], read: Callable[[Any, tuple], Any]) -> list:
        """A non-empty list whose elements pass ``read``; duplicates are rejected."""
        if value is None:
            return []
        if not isinstance(value, list) or not value:
            self.add(path, f"expected a non-empty list, got {value!r}")
            return []
        out = [read(v, (*path, i)) for i, v in enumerate(value)]
        seen = set()
        for i, v in enumerate(value):
            if isinstance(v, (str, int, float)) and v in seen:
                self.add((*path, i), f"duplicate value {v!r}")
            seen.add(v if isinstance(v, (str, int, float)) else id(v))
        return [o for o in out if o is not None]


# ---------------------------------------------------------------------------------------------
# Sections

_TIME = re.compile(r"^(?:(\d+)-)?(\d+(?::\d+){0,2})$")
_MEM = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)B?$", re.IGNORECASE)


def _minutes(value: Any, path: tuple, chk: _Checker) -> int:
    """Slurm's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (or an integer of minutes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        minutes = value
    elif isinstance(value, str) and (m := _TIME.match(value.strip())):
        parts = [int(p) for p in m.group(2).split(":")]
        if m.group(1) is not None:  # D-H[:M[:S]]
            h, mi, sec = (parts + [0, 0])[:3]
            seconds = ((int(m.group(1)) * 24 + h) * 60 + mi) * 60 + sec
        else:  # M | M:S | H:M:S
            h, mi, sec = parts if len(parts) == 3 else (0, parts[0], (parts + [0])[1])
            seconds = (h * 60 + mi) * 60 + sec
        minutes = -(-seconds // 60)  # Slurm rounds seconds up to the next minute
    else:
        chk.add(path, f"expected minutes or a Slurm time like '24:00:00' or '2-00:00:00', got {value!r}")
        return 60
    if minutes <= 0:
        chk.add(path, f"must be positive, got {value!r}")
        return 60
    if minutes > MAX_TIME_MIN:
        chk.add(path, f"must be at most 365 days, got {value!r}")
        return 60
    return minutes


def _gigabytes(value: Any, path: tuple, chk: _Checker) -> float | None:
    """Memory: a number of GB or a string like '32G', '500M', '1T'."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        gb = float(value)
    elif isinstance(value, str) and (m := _MEM.match(value.strip())):
        scale = {"K": 1 / 2**20, "M": 1 / 1024, "G": 1.0, "T": 1024.0, "": 1 / 1024}[m.group(2).upper()]
        gb = float(m.group(1)) * scale
    else:
        chk.add(path, f"expected GB or a size like '32G' / '500M', got {value!r}")
        return None
    if gb <= 0:
        chk.add(path, f"must be positive, got {value!r}")
        return None
    return gb


def _profile(name: str, raw: Any, path: tuple, chk: _Checker) -> Profile:
    d = chk.mapping(raw, path, PROFILE_KEYS)
    time_min = _minutes(d["time"], (*path, "time"), chk) if "time" in d else 60
    signal_delay = chk.integer(d.get("signal_delay_s"), (*path, "signal_delay_s"), 90)
    if signal_delay >= time_min * 60:
        chk.add((*path, "signal_delay_s"), f"{signal_delay} s leaves no time to train within "
                                           f"time={time_min} min")
    sbatch = chk.mapping(d.get("sbatch"), (*path, "sbatch"))
    for key, value in sbatch.items():
        if isinstance(key, str) and not _SLURM_KEY.fullmatch(key):
            chk.add((*path, "sbatch", key), "is not an sbatch option name (letters, digits, '-', '_')")
        if not isinstance(value, (str, int, bool)) or isinstance(value, float):
            chk.add((*path, "sbatch", key), f"expected a string, integer or true, got {value!r}")
        elif isinstance(value, str):
            chk.slurm_word(value, (*path, "sbatch", key))
        if isinstance(key, str) and key.replace("-", "_") in ("array", "signal", "output", "error"):
            chk.add((*path, "sbatch", key), "is set by the launcher and cannot be overridden")
    gpus = chk.integer(d.get("gpus"), (*path, "gpus"), 0)
    gres = [k for k in sbatch if isinstance(k, str) and k.replace("-", "_") in GPU_SBATCH_KEYS]
    if gpus and gres:
        chk.add((*path, "sbatch", gres[0]), f"asks for GPUs and so does gpus: {gpus}; keep one "
                                            "(gres: \"gpu:a100:1\" alone, or gpus with constraint)")
    return Profile(
        name=name,
        partition=chk.slurm_word(d.get("partition"), (*path, "partition")),
        account=chk.slurm_word(d.get("account"), (*path, "account")),
        qos=chk.slurm_word(d.get("qos"), (*path, "qos")),
        gpus=gpus,
        cpus=chk.integer(d.get("cpus"), (*path, "cpus"), 1, minimum=1),
        mem_gb=_gigabytes(d.get("mem"), (*path, "mem"), chk),
        time_min=time_min,
        constraint=chk.slurm_word(d.get("constraint"), (*path, "constraint")),
        nodes=chk.integer(d.get("nodes"), (*path, "nodes"), 1, minimum=1),
        tasks_per_node=chk.integer(d.get("tasks_per_node"), (*path, "tasks_per_node"), 0, minimum=1) or None,
        array_parallelism=chk.integer(d.get("array_parallelism"), (*path, "array_parallelism"), 32,
                                      minimum=1),
        signal_delay_s=signal_delay,
        max_requeues=chk.integer(d.get("max_requeues"), (*path, "max_requeues"), 3),
        max_array_size=chk.integer(d.get("max_array_size"), (*path, "max_array_size"), 0, minimum=1) or None,
        setup=tuple(chk.items(d.get("setup"), (*path, "setup"), chk.string)),
        sbatch={str(k): v for k, v in sbatch.items()},
    )


def _bind(value: Any, path: tuple, chk: _Checker, base: Path) -> Bind | None:
    """'src[:dst[:ro|rw]]'; a relative src is taken from the jobs file's directory."""
    if not isinstance(value, str) or not value.strip():
        chk.add(path, f"expected 'src[:dst[:ro|rw]]', got {value!r}")
        return None
    parts = value.split(":")
    if len(parts) > 3 or not parts[0]:
        chk.add(path, f"expected 'src[:dst[:ro|rw]]', got {value!r}")
        return None
    src = chk.path(parts[0], path, base)
    dst = chk.expand(parts[1], path) if len(parts) > 1 and parts[1] else src
    mode = parts[2] if len(parts) > 2 else "rw"
    if mode not in ("ro", "rw"):
        chk.add(path, f"mode {mode!r} is not ro or rw{suggest(mode, ('ro', 'rw'))}")
        return None
    if not dst.startswith("/"):
        chk.add(path, f"container path {dst!r} must be absolute")
        return None
    return Bind(src, dst, mode)


def _container(raw: Mapping[str, Any], path: tuple, chk: _Checker, base: Path) -> ContainerSpec:
    d = chk.mapping(raw, path, CONTAINER_KEYS)
    runtime = chk.choice(d.get("runtime"), (*path, "runtime"), RUNTIMES, "none")
    image = chk.string(d.get("image"), (*path, "image"))
    if runtime != "none" and image is None:
        chk.add((*path, "image"), f"runtime {runtime} needs an image (a .sif path or URI)")
    if image is not None:
        where = (*path, "image")
        image = chk.expand(image, where) if "://" in image else chk.path(image, where, base)
    env = chk.mapping(d.get("env"), (*path, "env"))
    for key, value in env.items():
        if isinstance(key, str) and not _ENV_KEY.fullmatch(key):
            chk.add((*path, "env", key), "is not an environment variable name")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            chk.add((*path, "env", key), f"expected a string or number, got {value!r}")
    env = {str(k): chk.expand(str(v), (*path, "env", k)) for k, v in env.items()}
    binds = chk.items(d.get("binds"), (*path, "binds"), lambda v, p: _bind(v, p, chk, base))
    return ContainerSpec(image=image, runtime=runtime or "none", binds=tuple(binds),
                         nv=chk.boolean(d.get("nv"), (*path, "nv"), True),
                         env=env)


def _seed(value: Any, path: tuple, chk: _Checker) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        chk.add(path, f"a seed is a non-negative integer, got {value!r}")
        return None
    if value >= 2**32:
        chk.add(path, f"a seed is below 2**32, got {value!r}")
        return None
    return value


def _sweep(raw: Any, path: tuple, chk: _Checker) -> dict[str, list]:
    d = chk.mapping(raw, path)
    out = {}
    for key, values in d.items():
        if not isinstance(values, list) or not values:
            chk.add((*path, key), f"a sweep lists the values to try, got {values!r}")
            continue
        out[key] = values
    return out


# ---------------------------------------------------------------------------------------------
# Experiments and studies


def _experiment(raw: Any, path: tuple, chk: _Checker, *, base: Path, defaults: dict,
                profiles: Mapping[str, Profile], study: str, output_root: Path) -> list[Task]:
    d = chk.mapping(raw, path, EXPERIMENT_KEYS)
    if not d:
        if raw is not None and isinstance(raw, dict):
            chk.add(path, "an experiment needs model, variants, dataset and data_path")
        return []
    for key in ("model", "variants", "dataset", "data_path"):
        if key not in d:
            chk.add(path, f"missing required key {key!r}")
    model = chk.choice(d.get("model"), (*path, "model"), model_names(), None)
    raw_dataset = d.get("dataset")
    dataset = chk.choice(raw_dataset.lower() if isinstance(raw_dataset, str) else raw_dataset,
                         (*path, "dataset"), dataset_names(), None)
    variants = chk.items(d.get("variants"), (*path, "variants"), lambda v, p: chk.name(v, p, "variant"))
    data_path = chk.string(d.get("data_path"), (*path, "data_path"))
    prompt = chk.choice(d.get("prompt"), (*path, "prompt"), PROMPTS, None)
    kind = model_kind(model) if model is not None else None  # chk.choice returns a known name or None
    if kind is not None and kind.prompts and prompt not in kind.prompts:
        chk.add((*path, "prompt"), f"{model} needs a prompt: {', '.join(kind.prompts)}"
                                   + (f" (got {prompt!r})" if prompt not in (None, "none") else ""))
    elif kind is not None and not kind.prompts and prompt not in (None, "none"):
        chk.add((*path, "prompt"), f"{model} takes no prompt (got {prompt!r})")
    if kind is not None and dataset is not None and dataset not in kind.datasets:
        chk.add((*path, "dataset"), f"{model} trains on {', '.join(kind.datasets)}, not {dataset}")
    own_hparams = chk.mapping(d.get("hparams"), (*path, "hparams"))
    own_sweep = _sweep(d.get("sweep"), (*path, "sweep"), chk)
    for key in own_sweep:
        if key in own_hparams:
            chk.add((*path, "sweep", key), "is also fixed in hparams of the same experiment; keep one")
    hparams = {**defaults.get("hparams", {}), **own_hparams}
    sweep = {**defaults.get("sweep", {}), **own_sweep}
    seeds = (chk.items(d["seeds"], (*path, "seeds"), lambda v, p: _seed(v, p, chk)) if "seeds" in d
             else defaults.get("seeds", [0]))
    profile = chk.string(d.get("profile"), (*path, "profile"), defaults.get("profile", "default"))
    if profile not in profiles:
        where = (*path, "profile") if "profile" in d else path
        chk.add(where, f"profile {profile!r} is not defined under profiles"
                       f"{suggest(str(profile), profiles) or ' (' + ', '.join(profiles) + ')'}")
    elif kind is not None and not kind.multi_gpu:
        _single_process(kind.name, profiles[profile], (*path, "profile") if "profile" in d else path, chk)
    if None in (model, dataset, data_path) or not variants or not seeds:
        return []
    count = len(variants) * len(seeds) * math.prod(len(v) for v in sweep.values())
    if count > MAX_TASKS:
        chk.add(path, f"expands to {count} tasks, more than the cap of {MAX_TASKS}; split the sweep "
                      "into several studies")
        return []
    data_path = chk.path(data_path, (*path, "data_path"), base)
    hparams = _path_hparams(hparams, (*path, "hparams") if "hparams" in d else path, chk, base)
    sweep = {k: [_path_hparams({k: v}, (*path, "sweep", k), chk, base)[k] for v in values]
             for k, values in sweep.items()}
    keys = list(sweep)
    tasks = []
    try:
        for variant in variants:
            for combo in itertools.product(*(sweep[k] for k in keys)):
                for seed in seeds:
                    tasks.append(Task(
                        model=model, variant=variant, dataset=dataset, data_path=data_path,
                        output_root=str(output_root), study=study, seed=seed, prompt=prompt or "none",
                        hparams={**hparams, **dict(zip(keys, combo, strict=True))}, profile=str(profile),
                    ))
    except InputError as exc:  # what Task itself checks (hparams values, names)
        chk.add(path, str(exc))
        return []
    return tasks


def _single_process(model: str, profile: Profile, path: tuple, chk: _Checker) -> None:
    """A kind without multi-GPU support (registry ``multi_gpu``) would train one copy per GPU."""
    world = profile.nodes * profile.ntasks_per_node
    if profile.gpus > 1 or world > 1:
        asked = f"gpus: {profile.gpus}" if profile.gpus > 1 else f"{world} processes"
        chk.add(path, f"{model} trains on one GPU in one process, but profile {profile.name!r} asks for "
                      f"{asked}; use a profile with gpus: 1")


def _path_hparams(hparams: dict, path: tuple, chk: _Checker, base: Path) -> dict:
    """The hparams of :data:`PATH_HPARAMS` as absolute paths (``sam_ckpt: none`` stays none)."""
    out = dict(hparams)
    for key in PATH_HPARAMS:
        value = out.get(key)
        if isinstance(value, str) and value not in _NOT_A_PATH:
            out[key] = chk.path(value, (*path, key), base)
    return out


def _executors() -> tuple[str, ...]:
    """The launcher's registered backends (imported here, at validation, since hpc builds on this module)."""
    from .hpc.launcher import BACKENDS

    return tuple(BACKENDS)


def _defaults(raw: Any, path: tuple, chk: _Checker, inherited: dict) -> dict:
    d = chk.mapping(raw, path, DEFAULT_KEYS)
    out = dict(inherited)
    if "profile" in d:
        out["profile"] = chk.string(d["profile"], (*path, "profile"), inherited.get("profile"))
    if "seeds" in d:
        out["seeds"] = chk.items(d["seeds"], (*path, "seeds"), lambda v, p: _seed(v, p, chk))
    out["hparams"] = {**inherited.get("hparams", {}), **chk.mapping(d.get("hparams"), (*path, "hparams"))}
    out["sweep"] = {**inherited.get("sweep", {}), **_sweep(d.get("sweep"), (*path, "sweep"), chk)}
    return out


def _profiles(raw: Any, path: tuple, chk: _Checker, inherited: Mapping[str, Profile]) -> dict[str, Profile]:
    out = dict(inherited)
    for name, body in chk.mapping(raw, path).items():
        chk.name(name, (*path, name), "profile name")
        out[str(name)] = _profile(str(name), body, (*path, name), chk)
    return out


def _study(name: str, raw: Any, path: tuple, chk: _Checker, *, base: Path, shared: dict) -> Study:
    d = chk.mapping(raw, path, STUDY_KEYS)
    chk.name(name, path, "study name")
    root = chk.string(d.get("output_root"), (*path, "output_root"), shared["output_root"])
    where = (*path, "output_root") if "output_root" in d else ("output_root",)
    output_root = Path(chk.path(str(root), where, base))
    executor = chk.choice(d.get("executor"), (*path, "executor"), _executors(), shared["executor"])
    container = _container({**shared["container"], **chk.mapping(d.get("container"), (*path, "container"))},
                           (*path, "container") if "container" in d else ("container",), chk, base)
    profiles = _profiles(d.get("profiles"), (*path, "profiles"), chk, shared["profiles"])
    defaults = _defaults(d.get("defaults"), (*path, "defaults"), chk, shared["defaults"])
    if "experiments" not in d:
        chk.add(path, "missing required key 'experiments'")
    experiments = d.get("experiments")
    if experiments is not None and (not isinstance(experiments, list) or not experiments):
        chk.add((*path, "experiments"), "expected a non-empty list of experiments")
        experiments = []
    tasks: list[Task] = []
    origins: dict[str, str] = {}
    for i, exp in enumerate(experiments or []):
        where = (*path, "experiments", i)
        for task in _experiment(exp, where, chk, base=base, defaults=defaults, profiles=profiles,
                                study=name, output_root=output_root):
            if task.task_id in origins:
                chk.add((*path, "experiments"), f"two experiments produce the same task {task.task_id}")
            origins[task.task_id] = chk.where(where)
            tasks.append(task)
        if len(tasks) > MAX_TASKS:
            chk.add((*path, "experiments"), f"more than the cap of {MAX_TASKS} tasks; split the study")
            break
    return Study(name=name, base_dir=base, output_root=output_root, executor=executor or "slurm",
                 container=container, profiles=profiles, tasks=tuple(tasks), origins=origins)


def from_dict(data: Any, *, source: str = "jobs.yaml", base: str | os.PathLike = ".",
              study: str | None = None, lines: Mapping[tuple[Any, ...], int] | None = None) -> Study:
    """Validate a parsed jobs file and return the selected study (every study is checked)."""
    chk = _Checker(source, lines)
    base = Path(base).resolve()
    top = chk.mapping(data, (), FILE_KEYS)
    if data is not None and not isinstance(data, dict):
        chk.raise_if_any()
    chk.control(data, ())
    chk.raise_if_any()  # a control character anywhere: nothing else of the file is trusted
    if "version" in top and top["version"] != 1:
        chk.add(("version",), f"only version 1 is understood, got {top['version']!r}")
    shared = {
        "output_root": chk.string(top.get("output_root"), ("output_root",), "runs"),
        "executor": chk.choice(top.get("executor"), ("executor",), _executors(), "slurm"),
        "container": chk.mapping(top.get("container"), ("container",), CONTAINER_KEYS),
        "profiles": _profiles(top.get("profiles"), ("profiles",), chk, {"default": Profile("default")}),
        "defaults": _defaults(top.get("defaults"), ("defaults",), chk, {"profile": "default", "seeds": [0]}),
    }
    studies_raw = chk.mapping(top.get("studies"), ("studies",))
    if not studies_raw:
        chk.add(("studies",), "expected at least one study under 'studies'")
    studies = {str(n): _study(str(n), body, ("studies", n), chk, base=base, shared=shared)
               for n, body in studies_raw.items()}
    chosen = _choose(study, top.get("default_study"), list(studies), chk)
    chk.raise_if_any()
    return studies[chosen]


def _choose(flag: str | None, default: Any, names: list[str], chk: _Checker) -> str:
    if flag is not None:
        if flag not in names:
            raise InputError(f"--study {flag!r} is not in {chk.source} ({', '.join(names) or 'no studies'})"
                             f"{suggest(flag, names)}")
        return flag
    if default is not None:
        if default not in names:
            chk.add(("default_study",), f"{default!r} is not a study{suggest(str(default), names)}")
            return names[0] if names else ""
        return str(default)
    if len(names) > 1:
        chk.add(("studies",), f"several studies ({', '.join(names)}): choose one with --study or set "
                              "default_study")
    return names[0] if names else ""


def _read(path: Path) -> tuple[Any, dict, list]:
    text, data = read_yaml(path)
    node = compose_yaml(text)
    dupes: list = []
    lines = _line_map(node, (), {}, dupes)
    return data, lines, dupes


def _with_settings(data: Any, settings: Iterable[str]) -> Any:
    """A copy of the file's data with ``profiles.<name>.<key>=<value>`` from the command line
    (``--set profiles.gpu.partition=a100 --set profiles.gpu.account=proj``); the value is read as
    YAML (numbers stay numbers) and validated with the rest of the file."""
    settings = list(settings)
    if not settings:
        return data
    out = copy.deepcopy(data) if isinstance(data, dict) else {}
    profiles = out.get("profiles") if isinstance(out.get("profiles"), dict) else {}
    for item in settings:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 3 or parts[0] != "profiles":
            raise InputError(f"--set {item!r}: expected profiles.<profile>.<key>=<value>")
        if parts[1] not in profiles:
            raise InputError(f"--set {item!r}: no profile {parts[1]!r} in the jobs file"
                             f"{suggest(parts[1], profiles) or ' (' + ', '.join(profiles) + ')'}")
        if parts[2] not in PROFILE_KEYS:
            raise InputError(f"--set {item!r}: unknown profile key {parts[2]!r}"
                             f"{suggest(parts[2], PROFILE_KEYS)}")
        try:
            parsed = yaml.safe_load(value) if value else None
        except yaml.YAMLError:
            parsed = value
        profiles[parts[1]] = {**(profiles[parts[1]] or {}), parts[2]: parsed}
    out["profiles"] = profiles
    return out


def load(path: str | os.PathLike, study: str | None = None, settings: Iterable[str] = ()) -> Study:
    """Read ``path`` with yaml.safe_load, apply ``--set`` settings to a copy, validate all of it,
    and return the chosen study."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such jobs file")
    data, lines, dupes = _read(path)
    if dupes:
        chk = _Checker(str(path), lines)
        for dup in dupes:
            chk.add(dup, "duplicate key (YAML keeps only the last one)")
        chk.raise_if_any()
    return from_dict(_with_settings(data, settings), source=str(path), base=path.parent, study=study,
                     lines=lines)


