"""The shared epoch loop: learning, resume at the next epoch, stop requests, checkpoint files."""

from __future__ import annotations

import pytest
import torch

from medsam2_hpc.engine import LoopConfig, TrainLoop, load_checkpoint, request_stop
from medsam2_hpc.engine.stop import StopRequested, clear_stop
from medsam2_hpc.errors import InputError
from medsam2_hpc.task import RunDir


def _setup(run: RunDir, epochs: int, compat_view=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    loop = TrainLoop(run, model=model, optimizer=opt, scheduler=sched,
                     config=LoopConfig(epochs=epochs, compat_view=compat_view))
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    y = x @ torch.tensor([[2.0], [-1.0]])
    seen: list[int] = []

    def train_epoch(epoch: int) -> dict[str, float]:
        seen.append(epoch)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.item(), "noise": torch.rand(1).item()}

    def validate(epoch: int) -> dict[str, float]:
        return {"dice": -torch.nn.functional.mse_loss(model(x), y).item()}

    return loop, train_epoch, validate, seen


def test_loop_learns_and_writes_last_best_and_compat_view(tmp_path):
    run = RunDir(tmp_path / "run")
    loop, train_epoch, validate, seen = _setup(run, epochs=5, compat_view=tmp_path / "run" / "Model")
    state = loop.fit(train_epoch, validate)
    losses = [h["train/loss"] for h in state.history]
    assert seen == [0, 1, 2, 3, 4] and losses[-1] < losses[0] / 2
    assert state.best_epoch == 4 and run.last_ckpt.exists() and run.best_ckpt.exists()
    assert (tmp_path / "run/Model/best_dice_epoch.pth").exists()
    assert (tmp_path / "run/Model/latest_epoch.pth").exists()
    assert any((run.logs / "tensorboard").iterdir())
    assert load_checkpoint(run.last_ckpt)["loop"]["epoch"] == 5


def test_resume_continues_at_next_epoch_with_identical_state(tmp_path):
    full_run = RunDir(tmp_path / "full")
    loop, train_epoch, validate, _ = _setup(full_run, epochs=4)
    full = loop.fit(train_epoch, validate)

    run = RunDir(tmp_path / "split")
    loop, train_epoch, validate, _ = _setup(run, epochs=2)
    loop.fit(train_epoch, validate)
    loop, train_epoch, validate, seen = _setup(run, epochs=4)
    assert loop.resume() is True
    resumed = loop.fit(train_epoch, validate)
    assert seen == [2, 3]
    # model, optimizer, scheduler and RNG all continue: the history matches an uninterrupted run
    assert resumed.history == full.history


def test_stop_request_leaves_after_the_epoch_and_is_resumable(tmp_path):
    run = RunDir(tmp_path / "run")
    loop, train_epoch, validate, seen = _setup(run, epochs=5)

    def stopping_epoch(epoch: int) -> dict[str, float]:
        if epoch == 1:
            request_stop()
        return train_epoch(epoch)

    try:
        with pytest.raises(StopRequested):
            loop.fit(stopping_epoch, validate)
    finally:
        clear_stop()
    assert load_checkpoint(run.last_ckpt)["loop"]["epoch"] == 2
    loop, train_epoch, validate, seen = _setup(run, epochs=5)
    loop.resume()
    loop.fit(train_epoch, validate)
    assert seen == [2, 3, 4]


def test_corrupt_or_missing_checkpoint_is_one_clear_input_error(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"last.pt: cannot be read"):
        load_checkpoint(bad)
    with pytest.raises(InputError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")


def _scripted(run: RunDir, scores: list[float], select: str = "best", val_freq: int = 1) -> TrainLoop:
    """A loop whose validation returns ``scores`` in turn (NaN: nothing scored that epoch)."""
    model = torch.nn.Linear(1, 1)
    loop = TrainLoop(run, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     config=LoopConfig(epochs=len(scores), val_freq=val_freq, select=select))
    marks = iter(scores)

    def train_epoch(epoch: int) -> dict[str, float]:
        with torch.no_grad():
            model.weight.fill_(float(epoch))  # the weights say which epoch they come from
        return {}

    loop.fit(train_epoch, lambda epoch: {"dice": next(marks)})
    return loop


def _weight(path) -> float:
    return float(load_checkpoint(path)["model"]["weight"])


def test_best_is_the_best_validated_epoch_and_last_is_the_last(tmp_path):
    best = _scripted(RunDir(tmp_path / "best"), [0.2, 0.7, 0.4]).selected()
    assert (best.select, best.epoch, best.validated, best.score) == ("best", 2, True, 0.7)
    assert _weight(best.path) == 1.0  # epoch index 1 = the second epoch
    last = _scripted(RunDir(tmp_path / "last"), [0.2, 0.7, 0.4], select="last").selected()
    assert (last.select, last.epoch, last.validated, last.score) == ("last", 3, True, 0.4)
    assert _weight(last.path) == 2.0


def test_a_run_that_never_validated_writes_no_best_and_says_so(tmp_path):
    run = RunDir(tmp_path / "never")
    chosen = _scripted(run, [float("nan")] * 3).selected()
    assert not run.best_ckpt.exists()  # epoch 1 is not "best" just because nothing was scored
    assert chosen.path == run.last_ckpt and chosen.record() == {"select": "best", "epoch": 3,
                                                                "validated": False}
    assert chosen.score is None
    # a NaN epoch after a finite one keeps the finite one as best
    kept = _scripted(RunDir(tmp_path / "kept"), [0.3, float("nan")]).selected()
    assert (kept.epoch, kept.validated, _weight(kept.path)) == (1, True, 0.0)
