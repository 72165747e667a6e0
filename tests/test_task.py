"""Task identity, RunDir status bookkeeping, atomic writes, option look-ups."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from medsam2_hpc import dataid
from medsam2_hpc.atomic import atomic_write, write_json
from medsam2_hpc.errors import InputError
from medsam2_hpc.options import config_from_dict, look_up
from medsam2_hpc.task import RunDir, Task


def _task(**kw) -> Task:
    base = dict(model="resnet", variant="resnet18", dataset="btcv", data_path="/d", study="s")
    return Task(**{**base, **kw})


def test_task_id_is_deterministic_and_depends_on_every_run_setting(tmp_path):
    a, b = _task(hparams={"lr": 0.1, "epochs": 2}), _task(hparams={"epochs": 2, "lr": 0.1})
    assert a.task_id == b.task_id
    assert a.task_id != _task(hparams={"lr": 0.2, "epochs": 2}).task_id
    assert a.task_id != _task(seed=1, hparams={"lr": 0.1, "epochs": 2}).task_id
    assert _task(name="exp_2024").task_id == "exp_2024"
    assert a.run_dir.path.parts[-2:] == ("s", a.task_id)


def test_task_id_follows_the_data_directory_name_and_content_not_its_location(tmp_path):
    """A data set staged elsewhere keeps its runs; another data set (a case more) gets new ones."""
    def task(data: Path) -> Task:
        return _task(data_path=str(data), hparams={"split_file": str(data / "splits.json")})

    data = tmp_path / "site" / "btcv"
    (data / "imagesTr").mkdir(parents=True)
    (data / "imagesTr" / "img0001.nii.gz").write_bytes(b"volume")
    (data / "splits.json").write_text("{}")
    before = task(data)
    assert before.task_id  # computed (and kept) while the data is there
    moved = tmp_path / "scratch" / "user" / "btcv"
    moved.parent.mkdir(parents=True)
    shutil.move(data, moved)
    (moved / "README.txt").write_text("notes beside the data")  # not a file any loader reads
    after = task(moved)
    assert after.task_id == before.task_id and after.identity() == before.identity()
    RunDir(tmp_path / "run").prepare(before).claim(after)  # the moved task may use the run directory
    (moved / "imagesTr" / "img0002.nii.gz").write_bytes(b"volume 2")
    dataid._fingerprint.cache_clear()  # a new process: the walk is cached per directory and mtime
    assert task(moved).task_id != before.task_id
    renamed = moved.rename(moved.with_name("btcv-copy"))
    assert task(renamed).task_id not in (before.task_id, task(moved).task_id)


def test_task_round_trips_through_task_yaml(tmp_path):
    task = _task(output_root=str(tmp_path), hparams={"lr": 0.5})
    run = task.run_dir.prepare(task)
    assert Task.from_yaml(run.task_yaml) == task
    for sub in ("checkpoints", "logs", "predictions", "vis"):
        assert (run.path / sub).is_dir()


@pytest.mark.parametrize("field,value", [("model", "unet"), ("dataset", "kits"), ("prompt", "scribble")])
def test_task_rejects_unknown_choices(field, value):
    with pytest.raises(InputError, match=value):
        _task(**{field: value})


def test_task_from_dict_names_unknown_keys(tmp_path):
    with pytest.raises(InputError, match="unknown key.*lrate"):
        Task.from_dict({**_task().to_dict(), "lrate": 1}, source="x.yaml")


def test_status_counts_attempts_and_keeps_error_tail(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.status()["state"] == "pending"
    run.mark_running()
    run.mark_preempted()
    status = run.mark_running()
    assert status["attempts"] == 2 and status["state"] == "running"
    try:
        raise RuntimeError("boom in epoch 3")
    except RuntimeError as exc:
        failed = run.mark_failed(exc)
    assert failed["state"] == "failed" and "boom in epoch 3" in failed["error"]
    assert json.loads(run.status_json.read_text())["attempts"] == 2


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"ok": 1})

    def broken(fh):
        fh.write(b"{partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@dataclass
class _Conf:
    lr: float = 1e-3
    amp: Literal["bf16", "fp16", "none"] = "bf16"
    epochs: int = 1


def test_config_from_dict_checks_keys_types_and_choices():
    conf = config_from_dict(_Conf, {"lr": 1, "amp": "none"}, "hparams")
    assert conf.lr == 1.0 and isinstance(conf.lr, float) and conf.amp == "none"
    with pytest.raises(InputError, match=r"unknown key 'lrr' in hparams \(did you mean 'lr'\?\)"):
        config_from_dict(_Conf, {"lrr": 1}, "hparams")
    with pytest.raises(InputError, match="hparams.epochs: expected int"):
        config_from_dict(_Conf, {"epochs": "ten"}, "hparams")
    with pytest.raises(InputError, match="did you mean 'bf16'"):
        config_from_dict(_Conf, {"amp": "bf61"}, "hparams")
    assert look_up("red", ["red", "green"], "colour") == "red"
