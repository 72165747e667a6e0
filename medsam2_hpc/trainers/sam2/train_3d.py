"""SAM2 3D fine-tuning on BTCV volumes (``--model sam2-3d``, ``train_3d.py``).

A clip of ``video_length`` consecutive slices is a short video. Every organ present in the
clip is one object of a single batched SAM2 pass (:mod:`medsam2_hpc.models.sam2_video`): on
every ``prompt_freq``-th slice each organ gets its prompt (bbox | click | mask; an empty mask
where it is absent), and SAM2's memory carries it through the other slices with gradients
flowing through the memories. By default the mask decoder (with the prompt encoder) and the
memory modules train, each with its own learning rate (the reference hard-codes them).
Validation predicts whole validation volumes (:mod:`medsam2_hpc.inference.predict`) and scores
volumetric Dice per organ and case, the per-slice Dice beside it, and HD95.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from medsam2_hpc.contract import RunCost, Selection, build_metrics
from medsam2_hpc.data import decode_first
from medsam2_hpc.data.btcv import BTCVClips, BTCVVolumes, training_volumes
from medsam2_hpc.engine import (
    LoopConfig,
    TrainLoop,
    autocast,
    count_params_m,
    peak_memory_gb,
    pick_device,
    progress,
)
from medsam2_hpc.engine.checkpoint import check_resumable
from medsam2_hpc.engine.distributed import any_process, epoch_loader, on_main, shard_size
from medsam2_hpc.engine.runtime import reset_peak_memory, seed_everything
from medsam2_hpc.errors import InputError
from medsam2_hpc.inference.predict import EvalSettings, evaluate, protocol
from medsam2_hpc.models.sam2 import TrainableParts, set_trainable
from medsam2_hpc.models.sam2_video import VideoPropagator
from medsam2_hpc.options import config_from_dict
from medsam2_hpc.precheck import once
from medsam2_hpc.scoring import Scores
from medsam2_hpc.task import RunDir, Task
from medsam2_hpc.trainers.sam2.common import (
    Sam2Config,
    build_model,
    check_model,
    load_weights_from,
    sam2_config_name,
)
from medsam2_hpc.trainers.sam2.step_3d import BoxJitter, adamw, clip_loss

__all__ = ["Sam2Config3D", "config", "check", "train", "validate_volumes"]


@dataclass(kw_only=True)
class Sam2Config3D(Sam2Config):
    """The 3D keys on top of :class:`Sam2Config` (same names as the seed flags).

    video_length (slices per training clip), prompt_freq (prompt every k-th slice),
    lr (mask decoder + prompt encoder), memory_lr (memory attention, memory encoder, object
    pointers and memory embeddings; the reference hard-codes 1e-8), encoder_lr (only with
    trainable=all), prompted_only (train only the organs present on a conditioning slice of the
    clip, as SAM2Train does: one seen only on tracked slices would get nothing but empty prompts
    and a positive target), max_cond_frames (prompted slices each
    slice attends to, closest first; -1 = all), clips_per_epoch (0 = every clip),
    activation_checkpointing (recompute each slice's per-object activations in the backward
    pass: 13 organs on 8-slice 1024 px clips need about 45 GiB without it),
    checkpoint_keeps_attention (with it, keep the attention kernels' outputs instead of
    recomputing them, see ``sam2_video._save_seeded_ops``: 16 of 84 TFLOP per 1024 px clip
    saved, 13.0 GiB of activations held at 13 organs instead of 5.8, both within 24 GiB
    (``bench_sam2.py --mode memory3d``); the default until a GPU shows whether the saved
    arithmetic outweighs the host cost of its dispatch mode, see ``sam2_video``),
    attention (default|cudnn: the fused attention kernel tried first, see ``sam2_video.ATTENTION``),
    compile (torch.compile the memory attention, memory encoder and mask decoder, ``dynamic=True``;
    off by default until a GPU benchmark shows a gain, and on a CPU the compilation takes minutes;
    with activation_checkpointing it needs checkpoint_keeps_attention false).
    """

    trainable: TrainableParts = "decoder+memory"
    video_length: int = 2
    prompt_freq: int = 2
    memory_lr: float = 1e-5
    encoder_lr: float = 1e-5
    prompted_only: bool = True
    max_cond_frames: int = 4
    clips_per_epoch: int = 0
    activation_checkpointing: bool = True
    checkpoint_keeps_attention: bool = True
    attention: Literal["default", "cudnn"] = "default"
    compile: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("video_length", "prompt_freq"):
            if getattr(self, key) < 1:
                raise InputError(f"hparams.{key}: {getattr(self, key)} must be >= 1")
        if self.max_cond_frames != -1 and self.max_cond_frames < 2:
            raise InputError(f"hparams.max_cond_frames: {self.max_cond_frames} must be -1 or >= 2")
        if self.clips_per_epoch < 0:
            raise InputError(f"hparams.clips_per_epoch: {self.clips_per_epoch} must be >= 0")
        if not (self.memory_lr > 0 and self.encoder_lr > 0):
            raise InputError("hparams: memory_lr and encoder_lr must be > 0")
        if self.compile and self.activation_checkpointing and self.checkpoint_keeps_attention:
            raise InputError("hparams.compile: needs checkpoint_keeps_attention: false (the selective "
                             "recompute fails on the compiled memory attention)")


def config(task: Task) -> Sam2Config3D:
    return config_from_dict(Sam2Config3D, task.hparams, "hparams")


def check(task: Task) -> None:
    """Hyper-parameters, data layout and checkpoints; writes nothing (runner.check did the prompt)."""
    cfg = config(task)
    check_resumable(task.run_dir)
    once(("btcv-volumes", task.data_path, cfg.split_file),
         lambda: decode_first(training_volumes(task.data_path, cfg.split_file), task.data_path))
    check_model(task, cfg)



def validate_volumes(propagator: VideoPropagator, volumes: BTCVVolumes, task: Task, cfg: Sam2Config3D,
                     device: torch.device, **kwargs: Any) -> Scores:
    """Whole-volume prediction and scores of ``volumes`` (the evaluation protocol of inference/predict.py)."""
    settings = EvalSettings(task.prompt, cfg.prompt_freq, cfg.image_size, device, cfg.amp, volumes.hd95_unit,
                            task.seed, cfg.hd95)
    result = evaluate(propagator, volumes, settings, **kwargs)
    return result.summary()


def _first(batch: list[dict]) -> dict:
    """Clips differ in organ count, so each is its own batch of objects."""
    return batch[0]


@dataclass(frozen=True)
class Epoch3D:
    """What every 3D training epoch reads: built once in :func:`train`, passed whole to the loop."""

    loop: TrainLoop
    propagator: VideoPropagator
    clips: BTCVClips
    cfg: Sam2Config3D
    task: Task
    device: torch.device


def _train_epoch(ctx: Epoch3D, epoch: int) -> dict[str, float]:
    loop, propagator, clips, cfg, task, device = (ctx.loop, ctx.propagator, ctx.clips, ctx.cfg, ctx.task,
                                                  ctx.device)
    model = propagator.model
    model.train()
    loss_fn = cfg.train_loss()
    jitter = BoxJitter(cfg.box_jitter, cfg.jitter_px(cfg.image_size))
    loader = epoch_loader(clips, epoch=epoch, seed=task.seed, batch_size=1, num_workers=cfg.num_workers,
                          collate_fn=_first, pin_memory=device.type == "cuda")  # this rank's clips
    n = shard_size(min(len(clips), cfg.clips_per_epoch or len(clips)))
    rng = np.random.default_rng([task.seed, epoch])
    totals, count = {"loss": 0.0, "mask": 0.0, "iou": 0.0, "obj": 0.0}, 0
    pending = 0  # clips since the last step that trained on some rank: all ranks step together
    loop.optimizer.zero_grad(set_to_none=True)
    for i, clip in enumerate(progress(loader, f"epoch {epoch + 1}", total=n)):
        if i >= n:
            break
        with autocast(device, cfg.amp):
            parts = clip_loss(propagator, clip, task.prompt, cfg.prompt_freq, loss_fn, rng, device,
                              prompted_only=cfg.prompted_only, jitter=jitter)
        if parts is not None:  # None: no organ to train in this clip
            loop.backward(parts["loss"] / cfg.batch_size)
            for key in totals:  # summed on the device, read once an epoch: no host sync per clip
                totals[key] = totals[key] + parts[key].detach().float()
            count += 1
        pending += any_process(parts is not None)
        if pending == cfg.batch_size:
            loop.step(cfg.grad_clip)
            pending = 0
        loop.check_stop()
    if pending:
        loop.step(cfg.grad_clip)
    return {k: float(v) / max(count, 1) for k, v in totals.items()}


def train(task: Task, run: RunDir) -> dict[str, Any]:
    cfg = config(task)
    device = pick_device(cfg.device)
    seed_everything(task.seed)
    volumes = training_volumes(task.data_path, cfg.split_file)
    clips = BTCVClips(volumes["train"], cfg.video_length, cfg.image_size)
    model = build_model(task, cfg, device)
    set_trainable(model, cfg.trainable)
    propagator = VideoPropagator(model, max_cond_frames=cfg.max_cond_frames,
                                 checkpoint=cfg.activation_checkpointing,
                                 keep_attention=cfg.checkpoint_keeps_attention, attention=cfg.attention,
                                 compile=cfg.compile)
    optimizer = adamw(model, cfg.lr, cfg.memory_lr, cfg.encoder_lr, cfg.weight_decay)
    loop = TrainLoop(run, model=model, optimizer=optimizer,
                     config=LoopConfig(epochs=cfg.epochs, val_freq=cfg.val_freq, select=cfg.select,
                                       compat_view=run.path / "Model" if cfg.compat_view else None),
                     extra_state={"sam_config": sam2_config_name(task, cfg), "image_size": cfg.image_size,
                                  "prompt": task.prompt, "prompt_freq": cfg.prompt_freq})
    loop.resume()
    reset_peak_memory(device)

    def validate(epoch: int) -> dict[str, float]:
        s = validate_volumes(propagator, volumes["val"], task, cfg, device)
        hd95 = math.nan if s.hd95_mean is None else s.hd95_mean
        return {"dice": s.dice_mean, "dice_per_slice": s.dice_mean_per_slice, "hd95": hd95}

    epoch_ctx = Epoch3D(loop, propagator, clips, cfg, task, device)
    loop.fit(lambda epoch: _train_epoch(epoch_ctx, epoch), validate)
    chosen = loop.selected()
    t0 = time.perf_counter()

    def score() -> Scores:
        load_weights_from(model, chosen.path)
        return validate_volumes(propagator, volumes["test"], task, cfg, device,
                                on_case=_PredictionWriter(run, cfg.vis > 0))

    s = on_main(score)  # rank 0 scores and writes; every rank returns the same metrics
    cost = RunCost(loop.state.epoch, loop.state.train_seconds, time.perf_counter() - t0,
                   count_params_m(model), peak_memory_gb(device))
    return build_metrics(
        task, split="test", scores=s, cost=cost, hparams=asdict(cfg),
        selection=Selection("val", volumes["val"].cases, chosen.score, chosen.record()),
        protocol=protocol(task.prompt, cfg.prompt_freq), image_size=cfg.image_size,
        video_length=cfg.video_length, trainable=cfg.trainable, postprocess=propagator.postprocess)


class _PredictionWriter:
    """Writes each test case's label volume (and overlay PNGs) as soon as it is predicted."""

    def __init__(self, run: RunDir, vis: bool) -> None:
        self.run, self.vis = run, vis

    def __call__(self, volume: Any, pred: np.ndarray) -> None:
        from medsam2_hpc.data.btcv import write_prediction
        from medsam2_hpc.inference.files import save_vis

        write_prediction(volume, pred, self.run.predictions)
        if self.vis:
            save_vis(volume, pred, self.run.vis)
