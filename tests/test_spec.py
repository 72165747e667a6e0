"""jobs.yaml: the shipped file, expansion, and every kind of bad input (key path, line, near miss)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from medsam2_hpc import spec
from medsam2_hpc.cli import main
from medsam2_hpc.errors import InputError

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """\
studies:
  s:
    experiments:
      - model: resnet
        variants: [resnet18]
        dataset: refuge
        data_path: data/REFUGE
"""


def write(tmp_path: Path, text: str, name: str = "jobs.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str, study: str | None = None) -> str:
    with pytest.raises(InputError) as info:
        spec.load(write(tmp_path, text), study)
    message = str(info.value)
    assert "\n" not in message  # one line on stderr
    return message


# --- the shipped jobs.yaml ------------------------------------------------------------------


def test_repo_jobs_yaml_default_study_is_the_comparison():
    study = spec.load(REPO / "jobs.yaml")
    assert study.name == "main" and study.executor == "slurm"
    combos = {(t.model, t.variant, t.dataset) for t in study.tasks}
    assert combos == {
        ("sam2-2d", "hiera_t", "refuge"), ("sam2-2d", "hiera_s", "refuge"),
        ("sam2-3d", "hiera_t", "btcv"), ("sam2-3d", "hiera_s", "btcv"),
        ("resnet", "resnet50", "refuge"), ("resnet", "resnet50", "btcv"),
        ("yolo", "yolo11l-seg", "refuge"), ("yolo", "yolo11l-seg", "btcv"),
    }
    assert {t.seed for t in study.tasks} == {0, 1, 2}
    assert len(study.tasks) == 24 == len({t.task_id for t in study.tasks})
    assert {t.profile for t in study.tasks} == {"gpu", "gpu-large"}
    assert study.container.runtime == "apptainer" and study.container.image.endswith("medsam2.sif")
    assert study.profiles["gpu"].time_min == 24 * 60 and study.profiles["gpu-large"].time_min == 2 * 24 * 60
    assert study.profiles["gpu"].mem_gb == 64
    sam2 = [t for t in study.tasks if t.model.startswith("sam2")]
    assert all(t.prompt in ("click", "bbox") for t in sam2)
    assert all(t.hparams["amp"] == "bf16" for t in study.tasks)  # defaults reach every task


def test_repo_jobs_yaml_demo_and_sweep_studies():
    demo = spec.load(REPO / "jobs.yaml", "demo")
    assert demo.executor == "local" and not demo.container.enabled
    assert {t.model for t in demo.tasks} == {"sam2-2d", "sam2-3d", "resnet", "yolo"}
    # both datasets for the baselines; small enough for a laptop (image side, epochs, one seed)
    pairs = {("sam2-2d", "refuge"), ("sam2-3d", "btcv"), *((m, d) for m in ("resnet", "yolo")
                                                           for d in ("refuge", "btcv"))}
    assert {(t.model, t.dataset) for t in demo.tasks} == pairs
    assert all(t.hparams["image_size"] <= 128 and t.hparams["epochs"] <= 40 and t.seed == 0
               for t in demo.tasks)
    assert demo.output_root == (REPO / "demo" / "runs").resolve()
    sweep = spec.load(REPO / "jobs.yaml", "lr-sweep")
    assert len(sweep.tasks) == 3 * 2 * 3
    assert {(t.hparams["lr"], t.hparams["batch_size"]) for t in sweep.tasks} == {
        (lr, b) for lr in (3e-5, 1e-4, 3e-4) for b in (2, 4)}


def test_task_ids_are_deterministic_and_paths_absolute(tmp_path):
    path = write(tmp_path, MINIMAL)
    first, second = spec.load(path), spec.load(path)
    assert [t.task_id for t in first.tasks] == [t.task_id for t in second.tasks]
    task = first.tasks[0]
    assert task.data_path == str(tmp_path / "data" / "REFUGE")
    assert task.output_root == str(tmp_path / "runs") and task.study == "s"
    assert task.run_dir.path == tmp_path / "runs" / "s" / task.task_id


def test_sweep_is_a_grid_over_variants_points_and_seeds(tmp_path):
    study = spec.load(write(tmp_path, """\
        defaults:
          seeds: [0, 1]
          hparams: {epochs: 3, lr: 0.1}
        studies:
          s:
            experiments:
              - model: resnet
                variants: [resnet18, resnet34]
                dataset: btcv
                data_path: d
                sweep: {lr: [0.01, 0.001], batch_size: [2, 4, 8]}
        """))
    assert len(study.tasks) == 2 * 2 * 3 * 2
    assert all(t.hparams["epochs"] == 3 for t in study.tasks)
    assert {t.hparams["lr"] for t in study.tasks} == {0.01, 0.001}  # the sweep wins over defaults
    assert len({t.task_id for t in study.tasks}) == len(study.tasks)


def test_study_overrides_shared_settings(tmp_path):
    study = spec.load(write(tmp_path, """\
        output_root: out
        container: {runtime: apptainer, image: img.sif, binds: ["data:/data:ro"]}
        profiles: {gpu: {gpus: 1, time: "1:00:00"}}
        defaults: {profile: gpu}
        studies:
          s:
            executor: local
            container: {runtime: none}
            profiles: {small: {time: 5, mem: 500M}}
            defaults: {profile: small, hparams: {epochs: 1}}
            experiments:
              - {model: resnet, variants: [resnet18], dataset: refuge, data_path: d}
              - {model: resnet, variants: [resnet18], dataset: btcv, data_path: d, profile: gpu}
        """))
    assert study.executor == "local" and study.container.runtime == "none"
    assert [t.profile for t in study.tasks] == ["small", "gpu"]
    assert study.profiles["small"].mem_gb == pytest.approx(500 / 1024)
    assert study.profiles["gpu"].time_min == 60
    assert study.container.binds[0] == spec.Bind(str(tmp_path / "data"), "/data", "ro")


@pytest.mark.parametrize("value, minutes", [
    (90, 90), ("90", 90), ("30:00", 30), ("0:59", 1), ("24:00:00", 1440), ("1:30:30", 91),
    ("2-00:00:00", 2880), ("1-12", 2160), ("1-2:30", 1590),
])
def test_slurm_time_formats(tmp_path, value, minutes):
    profile = f"profiles: {{default: {{time: {value!r}, signal_delay_s: 10}}}}\n"
    text = profile + MINIMAL
    assert spec.load(write(tmp_path, text)).profiles["default"].time_min == minutes


# --- bad input ------------------------------------------------------------------------------


def test_unknown_key_names_path_line_and_near_miss(tmp_path):
    message = error_of(tmp_path, MINIMAL.replace("dataset: refuge", "datset: refuge"))
    assert "studies.s.experiments[0].datset (line 6)" in message
    assert "did you mean 'dataset'?" in message
    assert "missing required key 'dataset'" in message  # every problem, in one report


def test_every_problem_is_reported_at_once(tmp_path):
    message = error_of(tmp_path, """\
        profiles:
          gpu: {gpus: two, cpus: 0, time: 10, signal_delay_s: 600, array_parallelism: 0, mem: lots}
        studies:
          s:
            experiments:
              - model: sam2-2d
                variants: [hiera_t]
                dataset: refuge
                data_path: d
                seeds: [0, -1, 0]
                profile: gpu
        """)
    assert message.startswith(str(tmp_path / "jobs.yaml") + ": 9 problems: ")
    for expected in ("profiles.gpu.gpus (line 2): expected an integer, got str 'two'",
                     "profiles.gpu.cpus (line 2): must be >= 1, got 0",
                     "profiles.gpu.signal_delay_s (line 2): 600 s leaves no time to train",
                     "profiles.gpu.array_parallelism (line 2): must be >= 1",
                     "profiles.gpu.mem (line 2): expected GB or a size",
                     "studies.s.experiments[0].prompt (line 6): sam2-2d needs a prompt",
                     "seeds[1] (line 10): a seed is a non-negative integer, got -1",
                     "seeds[2] (line 10): duplicate value 0"):
        assert expected in message


@pytest.mark.parametrize("change, expected", [
    (("model: resnet", "model: resnett"),
     "'resnett' is not one of sam2-2d, sam2-3d, resnet, yolo (did you mean 'resnet'?)"),
    (("dataset: refuge", "dataset: refug"), "did you mean 'refuge'?"),
    (("variants: [resnet18]", "variants: resnet18"), "variants (line 5): expected a non-empty list"),
    (("data_path: data/REFUGE", "data_path: 3"), "data_path (line 7): expected a non-empty string"),
    (("dataset: refuge", "dataset: refuge\n        prompt: bbox"), "resnet takes no prompt"),
    (("dataset: refuge", "dataset: refuge\n        profile: gpus"), "profile 'gpus' is not defined"),
    (("dataset: refuge", "dataset: refuge\n        hparams: [1]"), "hparams (line 7): expected a mapping"),
    (("dataset: refuge", "dataset: refuge\n        sweep: {lr: 0.1}"), "a sweep lists the values to try"),
    (("dataset: refuge", "dataset: refuge\n        hparams: {lr: 1}\n        sweep: {lr: [1, 2]}"),
     "sweep.lr (line 8): is also fixed in hparams"),
    (("studies:", "executor: slurmm\nstudies:"), "executor (line 1): 'slurmm' is not one of slurm, local"),
    (("studies:", "container: {runtime: apptainer}\nstudies:"), "runtime apptainer needs an image"),
    (("studies:", "container: {runtime: docker, image: x}\nstudies:"), "'docker' is not one of apptainer"),
    (("studies:", "container: {image: x, binds: ['a:b']}\nstudies:"), "container path 'b' must be absolute"),
    (("studies:", "container: {image: x, binds: ['a:/b:rx']}\nstudies:"), "mode 'rx' is not ro or rw"),
    (("studies:", "profiles: {p: {sbatch: {array: 1-3}}}\nstudies:"), "is set by the launcher"),
    (("studies:", "profiles: {p: {time: 0}}\nstudies:"), "time (line 1): must be positive"),
    (("studies:", "version: 2\nstudies:"), "only version 1 is understood"),
    (("  s:", "  s/x:"), "a study name is a directory name"),
])
def test_bad_values_are_named(tmp_path, change, expected):
    assert expected in error_of(tmp_path, MINIMAL.replace(*change))


def test_duplicate_experiments_and_yaml_keys(tmp_path):
    exp = "      - {model: resnet, variants: [resnet18], dataset: refuge, data_path: d}\n"
    text = "studies:\n  s:\n    experiments:\n" + exp + exp
    assert "two experiments produce the same task" in error_of(tmp_path, text)
    dupe = MINIMAL.replace("dataset: refuge", "dataset: refuge\n        dataset: btcv")
    assert "studies.s.experiments[0].dataset (line 7): duplicate key" in error_of(tmp_path, dupe)


def test_study_selection(tmp_path):
    two = MINIMAL + MINIMAL.split("studies:\n", 1)[1].replace("  s:", "  t:")
    assert "several studies (s, t): choose one with --study" in error_of(tmp_path, two)
    assert spec.load(write(tmp_path, two), "t").name == "t"
    assert "--study 'ss' is not in" in error_of(tmp_path, two, "ss") and "did you mean 's'?" in error_of(
        tmp_path, two, "ss")
    assert spec.load(write(tmp_path, "default_study: t\n" + two)).name == "t"


def test_yaml_is_safe_loaded_and_syntax_errors_have_lines(tmp_path):
    assert "is not valid YAML" in error_of(tmp_path, "studies: !!python/object/apply:os.system ['true']\n")
    message = error_of(tmp_path, "studies:\n  s: [\n")
    assert "line 3" in message and "is not valid YAML" in message
    assert "expected at least one study" in error_of(tmp_path, "{}\n")
    assert "no such jobs file" in str(pytest.raises(InputError, spec.load, tmp_path / "nope.yaml").value)


def test_cli_bad_spec_exits_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, MINIMAL.replace("model:", "modle:"))
    assert main(["submit", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'model'?" in err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_variables_expand_from_the_environment_and_paths_resolve_against_the_jobs_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("DATA", "/shared/data")
    monkeypatch.chdir("/")  # the working directory must not matter
    study = spec.load(write(tmp_path, """\
        output_root: $SCRATCH/runs
        container: {image: '${SCRATCH}/img.sif', binds: ['${DATA}:/data:ro'], env: {WHERE: $DATA}}
        studies:
          s:
            experiments:
              - model: sam2-2d
                variants: [hiera_t]
                dataset: refuge
                data_path: ${DATA}/REFUGE
                prompt: click
                hparams: {sam_ckpt: ckpt/sam2_hiera_tiny.pt, pretrain: ~/ft.pt}
              - {model: resnet, variants: [resnet18], dataset: refuge, data_path: d, hparams: {lr: 0.1}}
              - {model: sam2-3d, variants: [hiera_t], dataset: btcv, data_path: d, prompt: bbox,
                 hparams: {sam_ckpt: none}}
        """))
    assert study.output_root == tmp_path / "scratch" / "runs"
    assert study.container.image == str(tmp_path / "scratch" / "img.sif")
    assert study.container.binds[0] == spec.Bind("/shared/data", "/data", "ro")
    assert study.container.env == {"WHERE": "/shared/data"}
    sam2, resnet, sam3d = study.tasks
    assert sam2.data_path == "/shared/data/REFUGE"
    assert sam2.hparams["sam_ckpt"] == str(tmp_path / "ckpt" / "sam2_hiera_tiny.pt")
    assert sam2.hparams["pretrain"] == str(Path.home() / "ft.pt")
    assert sam3d.hparams["sam_ckpt"] == "none"  # a word, not a path
    assert resnet.data_path == str(tmp_path / "d")
    assert study.origins[resnet.task_id] == "studies.s.experiments[1] (line 12)"


def test_an_unset_variable_is_an_error_with_key_and_line(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_SCRATCH", raising=False)
    message = error_of(tmp_path, "output_root: $NOPE_SCRATCH/runs\n" + MINIMAL.replace(
        "data/REFUGE", "${NOPE_SCRATCH}/REFUGE"))
    assert "output_root (line 1): $NOPE_SCRATCH is not set in the environment" in message
    assert "studies.s.experiments[0].data_path (line 8): $NOPE_SCRATCH is not set" in message
    assert not list(tmp_path.glob("*NOPE*")) and not list(tmp_path.glob("$*"))
