"""The epoch loop every trainer shares: resume, validation cadence, checkpoints, logging.

A trainer supplies two callables (``train_epoch(epoch) -> scalars`` and
``validate(epoch) -> scalars with a 'dice' key``); the loop owns everything around them,
in the spirit of nnU-Net's short ``run_training``. Trainers know nothing of Slurm.
Its :meth:`TrainLoop.backward` and :meth:`TrainLoop.step` make the update the same on every rank
of a multi-GPU task, validation runs on rank 0 and only rank 0 writes (engine/distributed.py).

``best.pt`` is written only from an epoch whose validation returned a finite score, so an
unvalidated model is never reported as "best"; :meth:`TrainLoop.selected` names the weights
to score (``select: best|last``) and says whether validation ever chose them.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from tqdm import tqdm

from ..task import RunDir
from .checkpoint import link_into, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .distributed import Replicas, any_process, is_main_process, on_main
from .stop import StopRequested, stop_requested

__all__ = ["LoopConfig", "LoopState", "Selection", "TrainLoop", "progress"]

T = TypeVar("T")


@dataclass(kw_only=True)
class LoopConfig:
    epochs: int
    val_freq: int = 1
    monitor: str = "dice"
    select: Literal["best", "last"] = "best"  # the weights scored at the end (best on val, or the last)
    compat_view: Path | None = None  # Medical-SAM2-compatible <run>/Model/{best_dice_epoch,latest_epoch}.pth


@dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    best_score: float = -math.inf
    best_epoch: int = -1
    last_score: float = math.nan  # validation score of the last epoch (NaN: not validated)
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Selection:
    """The checkpoint to score and how it was chosen (metrics.json ``checkpoint``/``selection_dice``)."""

    path: Path
    select: str
    epoch: int | None  # 1-based
    validated: bool
    score: float | None  # the monitored validation score of these weights

    def record(self) -> dict[str, Any]:
        return {"select": self.select, "epoch": self.epoch, "validated": self.validated}


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A tqdm bar on stderr that stays readable in a Slurm log (few, long-interval updates)."""
    return iter(tqdm(iterable, desc=desc, total=total, file=sys.stderr, dynamic_ncols=True,
                     mininterval=2.0 if not sys.stderr.isatty() else 0.1, leave=False))


class TrainLoop:
    """Runs epochs ``state.epoch .. epochs-1``, saving ``last.pt`` after each and ``best.pt``."""

    def __init__(self, run: RunDir, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 config: LoopConfig, scheduler: Any = None, scaler: Any = None,
                 extra_state: dict[str, Any] | None = None) -> None:
        self.run = run
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.config = config
        self.extra_state = extra_state or {}
        self.state = LoopState()
        self._writer = None
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.replicas = Replicas(model, self.params)  # rank 0's weights on every rank

    # checkpoints -------------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "loop": asdict(self.state),
            "rng": rng_state(),
            "extra": self.extra_state,
        }

    def save(self, is_best: bool) -> None:
        """Rank 0 writes; on a multi-GPU task the other ranks hold identical weights."""
        if not is_main_process():
            return
        payload = self.payload()
        save_checkpoint(self.run.last_ckpt, payload)
        if is_best:
            save_checkpoint(self.run.best_ckpt, payload)
        if self.config.compat_view is not None:
            link_into(self.run.last_ckpt, self.config.compat_view / "latest_epoch.pth")
            if self.run.best_ckpt.exists():
                link_into(self.run.best_ckpt, self.config.compat_view / "best_dice_epoch.pth")

    def selected(self) -> Selection:
        """What to score after :meth:`fit`: ``best.pt`` (best validated epoch) or ``last.pt``.

        ``select: best`` with no validated epoch falls back to ``last.pt`` and says so
        (``validated`` False), rather than calling an unvalidated model the best.
        """
        st = self.state
        if self.config.select == "best" and st.best_epoch >= 0 and self.run.best_ckpt.exists():
            return Selection(self.run.best_ckpt, "best", st.best_epoch + 1, True, st.best_score)
        if self.config.select == "best":
            print(f"[train] {self.run.path}: no epoch validated with a finite {self.config.monitor}; "
                  "scoring last.pt", file=sys.stderr, flush=True)
        validated = math.isfinite(st.last_score)
        return Selection(self.run.last_ckpt, self.config.select, st.epoch or None, validated,
                         st.last_score if validated else None)

    def resume(self, path: Path | None = None) -> bool:
        """Continue from ``last.pt`` (or ``path``); False when there is nothing to resume."""
        path = path or self.run.last_ckpt
        if not Path(path).exists():
            return False
        ckpt = load_checkpoint(path, what="resume checkpoint")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = LoopState(**ckpt["loop"])
        self.extra_state.update(ckpt.get("extra") or {})
        set_rng_state(ckpt["rng"])
        return True

    # logging -----------------------------------------------------------------------
    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run.logs / "tensorboard"))
        return self._writer

    def log_scalars(self, scalars: dict[str, float], epoch: int) -> None:
        if not is_main_process():
            return
        for key, value in scalars.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    # one update --------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of ``loss`` (scaled for fp16); several calls before one :meth:`step` accumulate."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, clip: float = 0.0) -> None:
        """Average the gradients over ranks, clip their norm to ``clip`` (0 = off), update, zero them.

        Every rank calls it equally often. The fp16 scaler unscales after the average, so all
        ranks agree on an overflow, and before clipping, so the norm is real.
        """
        self.replicas.average_gradients()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if clip:
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def check_stop(self) -> None:
        """Call between batches: leaves the epoch when Slurm asked the job to stop.

        On a multi-GPU task every rank must call it equally often: all ranks stop together.
        """
        if any_process(stop_requested()):
            raise StopRequested("stop requested by signal; resume from last.pt")

    # the loop ----------------------------------------------------------------------
    def fit(self, train_epoch: Callable[[int], dict[str, float]],
            validate: Callable[[int], dict[str, float]]) -> LoopState:
        """Train the remaining epochs. ``train_epoch`` runs on every rank; ``validate`` on rank 0
        alone (so it holds no collective), its scores handed to every rank."""
        cfg = self.config
        try:
            for epoch in range(self.state.epoch, cfg.epochs):
                t0 = time.perf_counter()
                scalars = {f"train/{k}": float(v) for k, v in train_epoch(epoch).items()}
                self.state.train_seconds += time.perf_counter() - t0
                scalars["train/lr"] = float(self.optimizer.param_groups[0]["lr"])
                is_best = False
                self.state.last_score = math.nan
                if (epoch + 1) % max(cfg.val_freq, 1) == 0 or epoch + 1 == cfg.epochs:
                    val = on_main(functools.partial(validate, epoch))  # rank 0 scores, all ranks learn it
                    scalars.update({f"val/{k}": float(v) for k, v in val.items()})
                    score = float(val.get(cfg.monitor, math.nan))
                    self.state.last_score = score
                    if math.isfinite(score) and score > self.state.best_score:
                        self.state.best_score, self.state.best_epoch = score, epoch
                        is_best = True
                self.state.epoch = epoch + 1
                self.state.history.append({"epoch": float(epoch), **scalars})
                self.save(is_best=is_best)
                self.log_scalars(scalars, epoch)
                if is_main_process():
                    print(_epoch_line(epoch, cfg.epochs, scalars), file=sys.stderr, flush=True)
                self.check_stop()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        return self.state


def _epoch_line(epoch: int, epochs: int, scalars: dict[str, float]) -> str:
    parts = " ".join(f"{k}={v:.4g}" for k, v in scalars.items())
    return f"[epoch {epoch + 1}/{epochs}] {parts}"
