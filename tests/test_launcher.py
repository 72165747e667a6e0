"""The launcher with submitit's local and debug executors, and the Slurm/Apptainer paths with stand-ins.

A tiny but real trainer (``check``/``train`` below: a linear model in the shared TrainLoop, so
last.pt, resume and status.json are the real ones) runs through ``runner.run_task``. Programs
that cannot exist here (sbatch, srun, squeue, scancel, scontrol, apptainer) are replaced by
small scripts named "stand-in" that record how they were called; the real-Slurm tests live in
tests/slurm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path

import pytest
import torch
from submitit.helpers import DelayedSubmission

from medsam2_hpc import dataid, registry, runner, spec
from medsam2_hpc.cli import main
from medsam2_hpc.contract import RunCost, Selection, build_metrics, validate_metrics
from medsam2_hpc.engine import LoopConfig, TrainLoop
from medsam2_hpc.engine.stop import clear_stop
from medsam2_hpc.errors import InputError
from medsam2_hpc.hpc import containers, launcher
from medsam2_hpc.hpc.requeue import TIME_LIMIT_REASON, TaskCall, write_helpers
from medsam2_hpc.scoring import Scores
from medsam2_hpc.task import RunDir, Task

REPO = Path(__file__).resolve().parents[1]


# --- a tiny real trainer (the registry points a model kind at this module) ------------------


def check(task: Task) -> None:
    if not Path(task.data_path).is_dir():
        raise InputError(f"data_path {task.data_path}: no such directory")


def _log(run: RunDir, line: str) -> None:
    with open(run.path / "trainer.log", "a") as fh:
        fh.write(line + "\n")


def train(task: Task, run: RunDir) -> dict:
    torch.manual_seed(task.seed)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = TrainLoop(run, model=model, optimizer=opt, config=LoopConfig(epochs=int(task.hp("epochs", 2))))
    loop.resume()
    _log(run, f"start {loop.state.epoch}")
    if (Path(task.data_path) / f"FAIL_{task.seed}").exists():
        raise RuntimeError(f"planned failure of seed {task.seed}")

    def train_epoch(epoch: int) -> dict:
        if epoch == task.hp("hold_at", -1) and run.status()["attempts"] == 1:
            (run.path / "ready").write_text(str(os.getpid()))  # the test signals this process now
            for _ in range(1200):
                time.sleep(0.05)
            raise RuntimeError("no stop signal arrived")
        time.sleep(float(task.hp("epoch_s", 0)))  # a long run that costs no CPU (tests/slurm)
        loss = model(torch.ones(4, 2)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    state = loop.fit(train_epoch, lambda epoch: {"dice": 0.5})
    _log(run, "evaluate")
    return build_metrics(task, split="test", scores=Scores(0.5, {"cup": 0.5}, {"case0": {"cup": 0.5}}, "px"),
                         cost=RunCost(state.epoch, state.train_seconds, 0.0, 3e-6), hparams={},
                         selection=Selection("val", ["val0"], 0.5, loop.selected().record()))


def run_tiny(task: Task) -> dict:
    """The callable jobs run in a subprocess: the real run_task with this module as the trainer."""
    registry.MODEL_KINDS[task.model] = _tiny(task.model)
    return runner.run_task(task)


def _tiny(model: str) -> registry.ModelKind:
    return dataclasses.replace(registry.model_kind(model), trainer=__name__)


# --- helpers --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_stop_request_left():
    """checkpoint() raises the process-wide stop flag; other test modules must not inherit it."""
    yield
    clear_stop()


@pytest.fixture
def tiny_trainer(monkeypatch):
    """In-process runs (debug executor) use the default run_task with the tiny trainer."""
    monkeypatch.setitem(registry.MODEL_KINDS, "resnet", _tiny("resnet"))


def make_study(tmp_path: Path, *, executor: str = "debug", seeds=(0, 1), hparams=None,
               profiles: str = "", container: str = "", root: str = "runs", data: str = "data") -> spec.Study:
    (tmp_path / "data").mkdir(exist_ok=True)
    text = (f"output_root: {json.dumps(root)}\nexecutor: {executor}\n{container}"
            "profiles:\n  default: {time: 30, signal_delay_s: 20, array_parallelism: 1}\n" + profiles +
            "studies:\n  s:\n    experiments:\n"
            f"      - {{model: resnet, variants: [resnet18], dataset: refuge, data_path: {json.dumps(data)}, "
            f"seeds: {list(seeds)}, hparams: {json.dumps(hparams or {'epochs': 2})}}}\n")
    (tmp_path / "jobs.yaml").write_text(text)
    return spec.load(tmp_path / "jobs.yaml")


def standin(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/bash\n# Stand-in for {name} (not installed here): see the module docstring.\n"
                    + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def slurm_standins(tmp_path, monkeypatch) -> Path:
    """sbatch/srun/squeue/scancel stand-ins on PATH; calls and scripts are recorded in the log dir."""
    log = tmp_path / "standin-log"
    log.mkdir()
    bin_dir = tmp_path / "standin-bin"
    standin(bin_dir, "sbatch", 'n=$(( $(cat "$STANDIN_LOG/count" 2>/dev/null || echo 1000) + 1 ))\n'
                               'echo $n > "$STANDIN_LOG/count"\ncp "$1" "$STANDIN_LOG/script.$n"\n'
                               'echo "Submitted batch job $n"\n')
    standin(bin_dir, "srun", "exit 99\n")
    standin(bin_dir, "squeue", 'echo "$*" >> "$STANDIN_LOG/squeue.calls"\n'
                               'cat "$STANDIN_LOG/queue" 2>/dev/null\nexit 0\n')
    standin(bin_dir, "scancel", 'echo "$*" >> "$STANDIN_LOG/scancel.calls"\n')
    standin(bin_dir, "sacct", 'echo "sacct: error: Slurm accounting storage is disabled" >&2\nexit 1\n')
    standin(bin_dir, "scontrol", 'echo "MaxArraySize            = 1001"\n')
    monkeypatch.setenv("STANDIN_LOG", str(log))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


# --- dry run and the python command ----------------------------------------------------------


def test_dry_run_prints_tasks_and_one_array_script_per_profile_and_writes_nothing(tmp_path, tiny_trainer,
                                                                                  slurm_standins):
    (tmp_path / "img.sif").write_bytes(b"an image")
    study = make_study(
        tmp_path, executor="slurm", seeds=(0, 1, 2), root="out dir",
        container="container: {runtime: apptainer, image: img.sif}\n",
        profiles="  gpu: {gpus: 1, cpus: 4, mem: 16G, time: '2:00:00', array_parallelism: 2, "
                 "partition: gpu, sbatch: {mail-type: END}}\n")
    text = study.base_dir.joinpath("jobs.yaml").read_text().replace(
        "seeds: [0, 1, 2]", "seeds: [0, 1, 2], profile: gpu")
    text = text.replace("      - {model", "      - {model: resnet, variants: [resnet34], dataset: btcv, "
                        "data_path: data}\n      - {model", 1)
    study.base_dir.joinpath("jobs.yaml").write_text(text)
    study = spec.load(study.base_dir / "jobs.yaml")
    out = StringIO()
    launch = launcher.submit(study, dry_run=True, out=out)
    text = out.getvalue()
    assert launch.n_to_run == 4 and not launch.job_ids
    for task in study.tasks:
        assert task.task_id in text
    scripts = text.split("#!/bin/bash")[1:]
    assert len(scripts) == 2  # profiles default (1 task: a plain job) and gpu (an array of 3)
    gpu = next(s for s in scripts if "--array" in s)
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --gpus-per-node=1", "#SBATCH --mem=16G",
                 "#SBATCH --time=120", "#SBATCH --partition=gpu", "#SBATCH --mail-type=END",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --signal=B:USR2@90",
                 "export MEDSAM2_SIGNAL_DELAY_S=90"):
        assert line in gpu  # in the image, the host wrapper sends the pre-timeout signal (hpc/requeue.py)
    assert "--signal=USR2@" not in gpu and "trap '' USR2" in gpu
    command = gpu.strip().splitlines()[-1]
    argv = shlex.split(command)
    root = str(tmp_path / "out dir")
    wrapper = argv.index(f"{root}/s/.submitit/requeue-host.sh")
    assert "--open-mode=append" in argv[:wrapper]  # a requeued step must not truncate the logs
    assert argv[wrapper + 1: wrapper + 5] == ["apptainer", "exec", "--cleanenv", "--nv"]
    assert f"{root}:{root}:rw" in argv and f"{tmp_path}/data:{tmp_path}/data:ro" in argv
    assert argv[argv.index("--home") + 1] == f"{root}/.cache/home"
    assert f"TORCH_HOME={root}/.cache/torch" in argv
    # the digest of the image the job runs, for its metrics.json (hashed here, on the submitting host)
    assert f"MEDSAM2_IMAGE_DIGEST=sha256:{hashlib.sha256(b'an image').hexdigest()}" in argv
    # one folder per submission, named (and made) before sbatch: Slurm writes the elements' logs there
    assert argv[-5:] == ["python", "-u", "-m", "submitit.core._submit", f"{root}/s/.submitit/<submission>"]
    assert f"#SBATCH --output='{root}/s/.submitit/<submission>/%A_%a_0_log.out'" in gpu
    # an array's elements write their own submitit pickles from one batch file (hpc/batch.py)
    assert argv[-9:-5] == ["python", "-m", "medsam2_hpc.hpc.batch",
                           f"{root}/s/.submitit/<submission>/batch-<id>.bin"]
    plain = next(s for s in scripts if "--array" not in s)
    assert "--nv" not in plain  # profile without GPUs
    assert not (tmp_path / "out dir").exists()


def test_python_runs_on_the_host_or_in_the_image(tmp_path):
    host = make_study(tmp_path)
    assert launcher.python_argv(host, host.profiles["default"], host.tasks, launcher.LocalBackend(),
                                tmp_path) is None
    boxed = make_study(tmp_path, container="container: {runtime: singularity, image: a.sif, nv: false}\n",
                       profiles="  gpu: {gpus: 2}\n")
    argv = launcher.python_argv(boxed, boxed.profiles["gpu"], boxed.tasks, launcher.LocalBackend(), tmp_path)
    assert argv[0] == str(tmp_path / "requeue-host.sh")  # hands the job's variables to --cleanenv
    assert argv[1:4] == ["singularity", "exec", "--cleanenv"] and "--nv" not in argv
    assert argv[-2:] == [str(tmp_path / "a.sif"), "python"]


# --- debug and local executors --------------------------------------------------------------


def test_debug_executor_runs_every_task_and_submitting_again_is_safe(tmp_path, tiny_trainer):
    study = make_study(tmp_path)
    out = StringIO()
    launch = launcher.submit(study, out=out)
    assert launch.errors == [] and len(launch.job_ids) == 1
    for task in study.tasks:
        metrics = json.loads(task.run_dir.metrics_json.read_text())
        assert validate_metrics(metrics) == [] and metrics["epochs_completed"] == 2
        assert task.run_dir.status()["state"] == "completed" and task.run_dir.status()["attempts"] == 1
    record = launcher.submissions(study.study_dir)
    assert record[0]["executor"] == "debug" and set(record[0]["tasks"]) == {t.task_id for t in study.tasks}
    again = launcher.submit(study, out=out)
    assert again.n_to_run == 0 and set(again.skipped.values()) == {"completed"}
    assert "nothing to submit" in out.getvalue()
    assert len(launcher.submissions(study.study_dir)) == 1


def test_submitting_again_after_the_data_moved_skips_finished_tasks(tmp_path, tiny_trainer):
    """Task ids follow the data directory's name and content, not where it lives (task.py)."""
    site = tmp_path / "project" / "data"
    site.mkdir(parents=True)
    (site / "case0.png").write_bytes(b"an image")
    study = make_study(tmp_path, data="project/data")
    assert launcher.submit(study, out=StringIO()).errors == []
    (tmp_path / "scratch").mkdir()
    shutil.move(site, tmp_path / "scratch" / "data")
    moved = make_study(tmp_path, data="scratch/data")
    assert [t.task_id for t in moved.tasks] == [t.task_id for t in study.tasks]
    again = launcher.submit(moved, out=StringIO())
    assert again.n_to_run == 0 and set(again.skipped.values()) == {"completed"}
    (tmp_path / "scratch" / "data" / "case1.png").write_bytes(b"another image")  # another data set
    dataid._fingerprint.cache_clear()  # as a new process would: the walk is kept per directory and mtime
    grown = make_study(tmp_path, data="scratch/data")
    assert launcher.submit(grown, dry_run=True, out=StringIO()).n_to_run == 2


def test_failed_task_is_reported_and_resubmit_failed_reruns_only_it(tmp_path, tiny_trainer, capsys):
    study = make_study(tmp_path)
    (tmp_path / "data" / "FAIL_1").touch()
    launch = launcher.submit(study, out=StringIO())
    assert launch.errors == ["RuntimeError: planned failure of seed 1"]
    ok, bad = study.tasks
    assert ok.run_dir.status()["state"] == "completed"
    assert bad.run_dir.status()["state"] == "failed" and "planned failure" in bad.run_dir.status()["error"]
    assert main(["status", str(study.study_dir)]) == 0
    out = capsys.readouterr().out
    assert "completed 1, failed 1" in out and "RuntimeError: planned failure of seed 1" in out

    (tmp_path / "data" / "FAIL_1").unlink()
    assert main(["resubmit", str(tmp_path / "jobs.yaml"), "--failed"]) == 0
    assert bad.run_dir.status()["state"] == "completed" and bad.run_dir.status()["attempts"] == 2
    assert (ok.run_dir.path / "trainer.log").read_text() == "start 0\nevaluate\n"  # not run again
    assert main(["status", str(tmp_path / "jobs.yaml")]) == 0
    assert "2 task(s): completed 2" in capsys.readouterr().out


def test_missing_data_is_refused_before_anything_is_written(tmp_path, tiny_trainer):
    study = make_study(tmp_path)
    (tmp_path / "data").rmdir()
    problem = r"experiments\[0\] \(line 8\): task .*data_path .*data: no such dir"
    with pytest.raises(InputError, match=problem):
        launcher.submit(study, out=StringIO())
    assert not study.study_dir.exists()
    assert main(["resubmit", str(tmp_path / "jobs.yaml")]) == 2


def test_local_executor_runs_tasks_in_processes_in_waves(tmp_path, tiny_trainer):
    study = make_study(tmp_path, executor="local")
    launch = launcher.submit(study, fn=run_tiny, out=StringIO())
    assert launch.errors == [] and len(launch.job_ids) == 2  # array_parallelism 1: one wave per task
    for task in study.tasks:
        assert validate_metrics(json.loads(task.run_dir.metrics_json.read_text())) == []
        assert task.run_dir.status()["state"] == "completed"


@pytest.mark.slow
def test_real_resnet_trainer_through_the_local_executor(tmp_path, refuge_multirater):
    hparams = {"epochs": 1, "image_size": 64, "batch_size": 2, "num_workers": 0, "device": "cpu",
               "amp": "none"}
    study = make_study(tmp_path, executor="local", seeds=(0,), hparams=hparams, data=str(refuge_multirater))
    assert main(["submit", str(tmp_path / "jobs.yaml")]) == 0  # default callable: runner.run_task
    for task in study.tasks:
        metrics = json.loads(task.run_dir.metrics_json.read_text())
        assert validate_metrics(metrics) == [] and metrics["model"] == "resnet"
        assert task.run_dir.best_ckpt.exists() and task.run_dir.status()["attempts"] == 1


# --- preemption -----------------------------------------------------------------------------


def _wait_for(path: Path, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)
    time.sleep(0.2)  # the writer has finished the tiny file
    return path.read_text()


@pytest.mark.slow
def test_preempted_local_task_checkpoints_requeues_and_resumes(tmp_path, tiny_trainer):
    study = make_study(tmp_path, executor="local", seeds=(0,), hparams={"epochs": 3, "hold_at": 1})
    task = study.tasks[0]
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(launch=launcher.submit(study, fn=run_tiny,
                                                                                  out=StringIO())))
    thread.start()
    pid = int(_wait_for(task.run_dir.path / "ready"))
    os.kill(pid, signal.SIGUSR2)  # what Slurm sends before the time limit or on preemption
    thread.join(timeout=300)
    assert not thread.is_alive() and result["launch"].errors == []
    status = task.run_dir.status()
    assert status["state"] == "completed" and status["attempts"] == 2
    # epoch 0 finished before the signal; the second attempt resumed after it; evaluated once
    assert (task.run_dir.path / "trainer.log").read_text() == "start 0\nstart 1\nevaluate\n"
    assert json.loads(task.run_dir.metrics_json.read_text())["epochs_completed"] == 3


def _image_path() -> str:
    """The stand-in image's PATH: the host's, without any directory that has an scontrol."""
    dirs = [d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "scontrol").exists()]
    return os.pathsep.join(dirs)


# What Apptainer does with the environment, for the stand-in below: under --cleanenv the process
# gets only APPTAINERENV_<X> (as X), the --env values (which win) and the image's PATH and HOME.
STANDIN_APPTAINER = (
    "# 'exec [--cleanenv] [--nv] [--bind B] [--home H] [--env K=V] IMAGE CMD...' runs CMD on this host\n"
    "# with the environment Apptainer would give it inside the image (its PATH has no scontrol).\n"
    '[ "$1" = exec ] || exit 64; shift\nclean=0; home="$HOME"; envs=()\n'
    'while [ $# -gt 0 ]; do case "$1" in --cleanenv) clean=1; shift;; --nv) shift;; --bind) shift 2;;'
    ' --home) home="$2"; shift 2;; --env) envs+=("$2"); shift 2;; *) break;; esac; done\n'
    'shift; passed=()\n'
    'for name in $(compgen -e); do case "$name" in'
    ' APPTAINERENV_*) passed+=("${name#APPTAINERENV_}=${!name}");; esac; done\n'
    'base=(env); [ "$clean" = 1 ] && base=(env -i)\n'
    'exec "${base[@]}" "PATH=$STANDIN_IMAGE_PATH" "HOME=$home" "${passed[@]}" "${envs[@]}" "$@"\n')


def test_image_gets_only_the_variables_the_job_reads(tmp_path):
    """--cleanenv plus the host wrapper: Slurm's, submitit's and the rendezvous variables and the
    bound GPUs reach the image's process; a host PYTHONPATH (or anything else) does not."""
    folder = tmp_path / ".submitit"
    launcher.LocalBackend().prepare(folder, [str(folder / "requeue-host.sh")])
    bin_dir = tmp_path / "host-bin"
    standin(bin_dir, "apptainer", STANDIN_APPTAINER)
    image = spec.ContainerSpec(image="img.sif", runtime="apptainer", env={"A": "1"})
    argv = launcher.LocalBackend().wrap_python(containers.exec_prefix(image, gpus=1), folder)
    host = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STANDIN_IMAGE_PATH": "/usr/bin:/bin",
            "PYTHONPATH": "/host/site", "LD_LIBRARY_PATH": "/host/lib", "SECRET_TOKEN": "x",
            "SLURM_PROCID": "3", "SLURM_JOB_NODELIST": "gpu[01-02]", "SUBMITIT_EXECUTOR": "local",
            "MASTER_PORT": "29400", "CUDA_VISIBLE_DEVICES": "2,3", "MEDSAM2_GPUS": "2", "NCCL_DEBUG": "INFO"}
    out = subprocess.run([*argv, "env"], env=host, capture_output=True, text=True, check=True).stdout
    got = dict(line.split("=", 1) for line in out.splitlines())
    for key in ("SLURM_PROCID", "SLURM_JOB_NODELIST", "SUBMITIT_EXECUTOR", "MASTER_PORT",
                "CUDA_VISIBLE_DEVICES", "MEDSAM2_GPUS", "NCCL_DEBUG"):
        assert got[key] == host[key]
    assert got["A"] == "1" and got["PYTHONNOUSERSITE"] == "1"
    assert not {"PYTHONPATH", "LD_LIBRARY_PATH", "SECRET_TOKEN"} & set(got)


@pytest.mark.slow
def test_requeue_from_inside_a_container_goes_through_the_host_wrapper(tmp_path):
    """submitit inside the 'image' has no scontrol: the stand-in records the request, the host
    wrapper calls the (stand-in) host scontrol, and the next attempt resumes and finishes. The
    image runs with --cleanenv, so submitit finds its job only through what the wrapper hands over."""
    study = make_study(tmp_path, seeds=(0,), hparams={"epochs": 3, "hold_at": 1})
    task = study.tasks[0]
    folder = study.study_dir / ".submitit"
    wrapper = write_helpers(folder)
    submission = DelayedSubmission(TaskCall(run_tiny), task)
    submission.set_timeout(30, 3)
    submission.dump(folder / "123_4_submitted.pkl")
    bin_dir = tmp_path / "host-bin"
    standin(bin_dir, "scontrol", f'echo "$*" >> {shlex.quote(str(tmp_path / "scontrol.calls"))}\n')
    standin(bin_dir, "apptainer", STANDIN_APPTAINER)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "STANDIN_IMAGE_PATH": _image_path(), "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "130",
           "SLURM_ARRAY_JOB_ID": "123", "SLURM_ARRAY_TASK_ID": "4", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1"}
    image = spec.ContainerSpec(image="image.sif", runtime="apptainer", env={"FROM_ENV": "1"})
    binds = [spec.Bind(str(tmp_path), str(tmp_path))]
    argv = [str(wrapper), *containers.exec_prefix(image, gpus=0, binds=binds),
            sys.executable, "-u", "-m", "submitit.core._submit", str(folder)]

    step = subprocess.Popen(argv, env=env, cwd=REPO)
    pid = int(_wait_for(task.run_dir.path / "ready"))
    for target in (step.pid, pid):  # Slurm signals every process of the step
        os.kill(target, signal.SIGUSR2)
    assert step.wait(timeout=120) != 0
    assert (tmp_path / "scontrol.calls").read_text() == "requeue 123_4\n"
    status = task.run_dir.status()
    assert status["state"] == "preempted" and status["attempts"] == 1 and status["error"] is None
    assert not list(folder.glob("requeue.*"))  # the marker was consumed
    assert not task.run_dir.metrics_json.exists()

    # Slurm starts the requeued job: same command, same job id, the checkpointed submission
    assert subprocess.run(argv, env=env, cwd=REPO, timeout=300).returncode == 0
    status = task.run_dir.status()
    assert status["state"] == "completed" and status["attempts"] == 2
    assert (task.run_dir.path / "trainer.log").read_text() == "start 0\nstart 1\nevaluate\n"
    assert (tmp_path / "scontrol.calls").read_text() == "requeue 123_4\n"


def test_scontrol_shim_records_only_requeue(tmp_path):
    write_helpers(tmp_path)
    marker = tmp_path / "marker"
    shim = str(tmp_path / "shim" / "scontrol")
    env = {**os.environ, "MEDSAM2_REQUEUE_MARKER": str(marker)}
    assert subprocess.run([shim, "requeue", "9_1"], env=env).returncode == 0
    assert marker.read_text() == "9_1\n"
    other = subprocess.run([shim, "show", "job"], env=env, capture_output=True, text=True)
    assert other.returncode == 1 and "not available inside the container" in other.stderr


# --- Slurm with stand-ins -------------------------------------------------------------------


def test_slurm_submits_one_sbatch_per_profile_skips_queued_and_cancels(tmp_path, tiny_trainer,
                                                                       slurm_standins):
    study = make_study(tmp_path, executor="slurm", seeds=(0, 1, 2),
                       profiles="  big: {cpus: 2, time: 60, array_parallelism: 2}\n")
    text = (tmp_path / "jobs.yaml").read_text().replace(
        "experiments:\n", "experiments:\n      - {model: resnet, variants: [resnet50], dataset: btcv, "
                          "data_path: data, seeds: [0, 1], profile: big}\n")
    (tmp_path / "jobs.yaml").write_text(text)
    study = spec.load(tmp_path / "jobs.yaml")
    launch = launcher.submit(study, out=StringIO())
    scripts = sorted(slurm_standins.glob("script.*"))
    assert len(scripts) == 2 == len(study.profiles)  # one sbatch per profile
    assert launch.job_ids == ["1001", "1002"]
    texts = [p.read_text() for p in scripts]
    assert "#SBATCH --array=0-1%2" in texts[0] and "#SBATCH --array=0-2%1" in texts[1]
    record = launcher.submissions(study.study_dir)
    elements = {t: j for sub in record for t, j in sub["tasks"].items()}
    assert sorted(elements.values()) == ["1001_0", "1001_1", "1002_0", "1002_1", "1002_2"]

    (slurm_standins / "queue").write_text("1001_0|RUNNING|None|5:00\n1001_1|PENDING|Priority|0:00\n"
                                          "1002_0|RUNNING|None|4:00\n")
    again = launcher.submit(study, out=StringIO())
    assert again.n_to_run == 2 and len(list(slurm_standins.glob("script.*"))) == 3  # 1002_1, 1002_2
    assert sum("in queue as" in reason for reason in again.skipped.values()) == 3
    gone = [t for t, e in elements.items() if e in ("1002_1", "1002_2")]  # left the queue, no accounting
    for task_id in gone:
        status = RunDir(study.study_dir / task_id).status()
        assert status["state"] == "failed" and status["slurm_state"] == "GONE"
        assert "left the queue without a final status" in status["error"]

    rows = {r["job"]: r for r in launcher.status_rows(study.study_dir)}
    assert rows["1001_0"]["slurm"] == "RUNNING" and rows["1001_0"]["elapsed"] == "5:00"
    assert rows["1001_1"]["slurm"] == "PENDING" and rows["1001_1"]["reason"] == "Priority"
    log = Path(rows["1001_1"]["log"])  # in its submission's folder, made before sbatch for Slurm to write in
    assert log.name == "1001_1_0_log.err" and log.parent.parent == study.study_dir / ".submitit"
    assert log.parent.is_dir() and f"--output={log.parent}/%A_%a_0_log.out" in texts[0]
    assert launcher.cancel(study.study_dir) == ["1001", "1002"]
    assert (slurm_standins / "scancel.calls").read_text() == "1001 1002\n"


def test_slurm_without_sbatch_is_bad_input(tmp_path, tiny_trainer, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    study = make_study(tmp_path, executor="slurm")
    with pytest.raises(InputError, match="sbatch/srun are not on PATH"):
        launcher.submit(study, out=StringIO())
    assert not study.study_dir.exists()  # bad input: nothing written, not even a log folder
    container = f"container: {{runtime: apptainer, image: {tmp_path / 'm.sif'}}}\n"
    (tmp_path / "m.sif").write_text("an image")
    study = make_study(tmp_path, executor="slurm", container=container)
    with pytest.raises(InputError, match="sbatch/srun are not on PATH"):
        launcher.submit(study, out=StringIO())
    assert not study.output_root.exists()  # nor the requeue wrapper or the image's cache folder


def _signalled_element(tmp_path: Path, max_requeues: int) -> tuple[Task, int, Path]:
    """One array element run by submitit's own job entry point, so its real USR2 handler, the
    real TaskCall and the real run_task; USR2 arrives in epoch 1. ``scontrol`` is a stand-in
    that records the requeue. Returns the task, the element's exit code and the calls file."""
    task = make_study(tmp_path, seeds=(0,), hparams={"epochs": 3, "hold_at": 1}).tasks[0]
    folder = tmp_path / "submitit"
    folder.mkdir()
    submission = DelayedSubmission(TaskCall(run_tiny), task)
    submission.set_timeout(1, max_requeues)  # under 10 minutes, submitit counts every USR2 as a timeout
    submission.dump(folder / "123_4_submitted.pkl")
    calls = tmp_path / "scontrol.calls"
    bin_dir = tmp_path / "host-bin"
    standin(bin_dir, "scontrol", f'echo "$*" >> {shlex.quote(str(calls))}\n')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SUBMITIT_EXECUTOR": "slurm",
           "SLURM_JOB_ID": "130", "SLURM_ARRAY_JOB_ID": "123", "SLURM_ARRAY_TASK_ID": "4",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS": "1",
           "SLURM_JOB_NUM_NODES": "1"}
    step = subprocess.Popen([sys.executable, "-u", "-m", "submitit.core._submit", str(folder)],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.kill(int(_wait_for(task.run_dir.path / "ready")), signal.SIGUSR2)
    return task, step.wait(timeout=120), calls


@pytest.mark.slow
def test_time_limit_signal_with_a_requeue_left_is_preempted(tmp_path):
    task, code, calls = _signalled_element(tmp_path, max_requeues=1)
    assert code != 0 and calls.read_text() == "requeue 123_4\n"
    status = task.run_dir.status()
    assert status["state"] == "preempted" and status["attempts"] == 1 and status["error"] is None
    assert not task.run_dir.metrics_json.exists() and task.run_dir.last_ckpt.exists()


@pytest.mark.slow
def test_time_limit_signal_after_the_last_requeue_is_failed_with_the_reason(tmp_path):
    task, code, calls = _signalled_element(tmp_path, max_requeues=0)
    assert code != 0 and not calls.exists()  # submitit did not requeue
    status = task.run_dir.status()
    assert status["state"] == "failed" and status["attempts"] == 1
    assert "timed-out too many times" in status["error"]
    assert status["error"].splitlines()[-1] == TIME_LIMIT_REASON


def _must_not_run(task: Task) -> dict:
    raise AssertionError(f"{task.task_id} trained again although metrics.json exists")


def test_task_call_never_trains_twice_once_metrics_exist(tmp_path):
    task = make_study(tmp_path, seeds=(0,)).tasks[0]
    task.run_dir.write_metrics({"done": True})  # e.g. stopped between metrics.json and status.json
    assert TaskCall(_must_not_run)(task) == {"done": True}
    assert task.run_dir.status()["state"] == "completed"
    call = TaskCall(run_tiny)
    resubmission = call.checkpoint(task)
    assert isinstance(resubmission.function, TaskCall) and resubmission.args == (task,)
    assert resubmission.function.fn is run_tiny
