"""SAM2 3D trainer: one epoch writes the run contract, training learns, objects batch exactly.

Hiera-T with random weights at 64 px on the synthetic BTCV fixtures (CPU).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sam2.modeling.memory_attention import MemoryAttention

from medsam2_hpc import runner
from medsam2_hpc.contract import validate_metrics
from medsam2_hpc.data import synthetic
from medsam2_hpc.data.btcv import BTCVClips, BTCVVolumes
from medsam2_hpc.engine.benchmark import count_flops
from medsam2_hpc.errors import InputError
from medsam2_hpc.inference.predict import EvalSettings, evaluate
from medsam2_hpc.losses import MultimaskLoss, make_loss
from medsam2_hpc.models.memory_read import KeyCache
from medsam2_hpc.models.sam2 import build_sam2_model, set_trainable
from medsam2_hpc.models.sam2_video import ObjectPrompts, VideoPropagator
from medsam2_hpc.runner import run_task
from medsam2_hpc.task import Task
from medsam2_hpc.trainers.sam2.step_3d import clip_loss, clip_organs, param_groups

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SIZE = 64


def _tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_sam2_model("sam2_hiera_t", None, image_size=SIZE, allow_random=True)


def _task(root, out, **hp) -> Task:
    hparams = {"epochs": 1, "image_size": SIZE, "sam_ckpt": "none", "num_workers": 0, "video_length": 4,
               "clips_per_epoch": 2, "vis": 1, "hd95": True, **hp}
    return Task(model="sam2-3d", variant="hiera_t", dataset="btcv", data_path=str(root), output_root=str(out),
                prompt="bbox", hparams=hparams)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["slices", "nifti"])
def test_one_epoch_writes_every_output(layout, request, tmp_path):
    root = request.getfixturevalue(f"btcv_{layout}")
    task = _task(root, tmp_path)
    metrics = run_task(task)
    run = task.run_dir
    assert validate_metrics(metrics) == []
    assert metrics["model"] == "sam2-3d" and metrics["variant"] == "hiera_t" and metrics["prompt"] == "bbox"
    assert metrics["epochs_completed"] == 1 and metrics["protocol"]["prompt_freq"] == 2
    assert set(metrics["per_case"]) == set(BTCVVolumes(root, "test").cases)
    assert all(0.0 <= d <= 1.0 for case in metrics["per_case"].values() for d in case.values())
    assert metrics["dice_mean_per_slice"] is not None and metrics["hd95_mean"] is not None
    for path in (run.last_ckpt, run.best_ckpt, run.metrics_json, run.status_json):
        assert path.is_file()
    assert list((run.logs / "tensorboard").iterdir())
    assert list(run.vis.glob("*.png"))
    for case in metrics["per_case"]:
        pred = np.load(run.predictions / f"{case}.npy")
        assert pred.dtype == np.uint8 and set(np.unique(pred)) <= {0, 1, 2, 3, 6}
        assert (run.predictions / f"{case}.nii.gz").is_file() == (layout == "nifti")
    assert run.status()["state"] == "completed"


def test_overfitting_one_volume_raises_dice(tmp_path):
    root = synthetic.make_btcv(tmp_path / "one", "slices", n_train=2, n_test=1, depth=8, size=SIZE,
                               organs=(1, 6), seed=0)  # train = img0001 (img0002 is carved as val)
    volumes = BTCVVolumes(root, "train")
    clips = BTCVClips(volumes, 4, SIZE)
    model = _tiny_model()
    set_trainable(model, "decoder+memory")
    prop = VideoPropagator(model)
    opt = torch.optim.AdamW(param_groups(model, 1e-3, 1e-4, 1e-4), weight_decay=0.0)
    loss_fn, rng, cpu = MultimaskLoss(make_loss("bce")), np.random.default_rng(0), torch.device("cpu")

    def dice() -> float:
        settings = EvalSettings("bbox", 4, SIZE, cpu, "none", volumes.hd95_unit, hd95=False)
        result = evaluate(prop, volumes, settings)
        return result.summary().dice_mean

    before = dice()
    # only clips with an organ on their prompted slice train (3 and 4 of the 5): 60 steps on them
    # (after 30 the Dice still swings with the thread count: 0.26 with 2 threads, 0.3+ with 1)
    trained = [c for c in clips if clip_organs(c["label"][:1])]
    assert len(trained) == 2
    for step in range(60):
        model.train()
        parts = clip_loss(prop, trained[step % len(trained)], "bbox", 4, loss_fn, rng, cpu)
        opt.zero_grad()
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as the trainer (grad_clip 1.0)
        opt.step()
    after = dice()
    assert after > before + 0.3, (before, after)


def test_batched_objects_match_one_by_one():
    model = _tiny_model(1).eval()
    # random heads call every object absent (masks all -1024); make them present so masks differ
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(5.0)
    prop = VideoPropagator(model)
    frames, k = 5, 3
    images = torch.rand(frames, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[[5, 5], [30, 30]], [[20, 25], [50, 45]], [[2, 35], [25, 60]]], dtype=torch.float)
    labels = torch.tensor([[2, 3]] * k, dtype=torch.int32)
    masks = torch.zeros(k, 1, SIZE, SIZE)
    masks[2, 0, 10:20, 10:20] = 1
    prompts = {0: ObjectPrompts(torch.tensor([False, False, True]), masks, boxes, labels),
               3: ObjectPrompts(torch.zeros(k, dtype=torch.bool), None, boxes, labels)}
    with torch.no_grad():
        feats = prop.encode(images)
        batched = dict(prop.propagate(feats, prompts, frames, k))
        assert batched[1].high_res.std() > 0  # real masks, not the constant "absent" value
        for i in range(k):
            one = {t: ObjectPrompts(p.use_mask[i:i + 1], None if p.masks is None else p.masks[i:i + 1],
                                    p.point_coords[i:i + 1], p.point_labels[i:i + 1])
                   for t, p in prompts.items()}
            single = dict(prop.propagate(feats, one, frames, 1))
            for t in range(frames):
                torch.testing.assert_close(single[t].high_res[0], batched[t].high_res[i],
                                           atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(single[t].object_score[0], batched[t].object_score[i],
                                           atol=1e-4, rtol=1e-4)


def test_gradients_reach_memory_modules_through_propagation(btcv_slices):
    model = _tiny_model()
    set_trainable(model, "decoder+memory")
    clip = BTCVClips(BTCVVolumes(btcv_slices, "train"), 4, SIZE)[8]
    parts = clip_loss(VideoPropagator(model), clip, "click", 2, MultimaskLoss(make_loss("dicefocal")),
                      np.random.default_rng(0), torch.device("cpu"))
    parts["loss"].backward()
    touched = {n.split(".")[0] for n, p in model.named_parameters()
               if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"memory_attention", "memory_encoder", "sam_mask_decoder"} <= touched
    assert all(p.grad is None for p in model.image_encoder.parameters())


@pytest.mark.parametrize("multimask", [True, False])
def test_multimask_loss_trains_the_iou_head_and_every_mask_token(btcv_slices, multimask):
    """SAM2Train's loss reaches the IoU head and all four mask tokens; the loss on the picked
    mask alone (``multimask_loss: false``, the earlier behaviour) leaves the IoU head untrained."""
    model = _tiny_model()
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(5.0)  # masks, not "absent"
    set_trainable(model, "decoder")
    clip = BTCVClips(BTCVVolumes(btcv_slices, "train"), 4, SIZE)[8]
    loss_fn = MultimaskLoss(make_loss("bce"), multimask=multimask)
    parts = clip_loss(VideoPropagator(model), clip, "bbox", 2, loss_fn, np.random.default_rng(0),
                      torch.device("cpu"))
    parts["loss"].backward()
    head = model.sam_mask_decoder
    iou_grads = [p.grad for p in head.iou_prediction_head.parameters()]
    if multimask:
        assert float(parts["iou"]) > 0
        assert all(g is not None and g.abs().sum() > 0 for g in iou_grads)
        assert (head.mask_tokens.weight.grad.abs().sum(1) > 0).all()
    else:
        assert all(g is None for g in iou_grads)


def test_organs_unprompted_in_a_clip_are_not_trained(monkeypatch):
    """Organ 3 shows only on tracked slice 1 (prompts on 0 and 2): not an object of the clip,
    unless ``prompted_only`` is off; a clip holding only such an organ trains nothing."""
    label = torch.zeros(3, SIZE, SIZE, dtype=torch.long)
    label[:, 10:30, 10:30] = 1
    label[1, 40:50, 40:50] = 3
    image = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    prop = VideoPropagator(_tiny_model())
    seen: list[int] = []
    original = prop.propagate

    def spy(features, prompts, frames, k, **kwargs):
        seen.append(k)
        yield from original(features, prompts, frames, k, **kwargs)

    monkeypatch.setattr(prop, "propagate", spy)
    loss_fn, cpu = MultimaskLoss(make_loss("bce")), torch.device("cpu")
    for prompted_only, objects in ((True, 1), (False, 2)):
        with torch.no_grad():
            clip_loss(prop, {"image": image, "label": label}, "bbox", 2, loss_fn, np.random.default_rng(0),
                      cpu, prompted_only=prompted_only)
        assert seen[-1] == objects
    only_tracked = torch.where(label == 3, 3, 0)
    assert clip_loss(prop, {"image": image, "label": only_tracked}, "bbox", 2, loss_fn,
                     np.random.default_rng(0), cpu) is None


def test_box_jitter_moves_corners_as_sam2train():
    """Each corner coordinate within min(0.1 x box side, bound) of the tight box, clamped to the image."""
    from medsam2_hpc.trainers.sam2.step_3d import BoxJitter, clip_prompts

    label = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
    label[0, 10:31, 0:41] = 1  # box x 0..40 (width 40), y 10..30 (height 20)
    rng, cpu = np.random.default_rng(0), torch.device("cpu")
    tight = clip_prompts(label, [1], "bbox", 1, rng, cpu)[0].point_coords[0]
    assert tight.tolist() == [[0, 10], [40, 30]]
    moved = torch.stack([clip_prompts(label, [1], "bbox", 1, rng, cpu, BoxJitter(0.1, 3.0))[0].point_coords[0]
                         for _ in range(100)])
    delta = (moved - tight).abs().amax(0)  # (corner, x|y)
    assert torch.all(delta <= torch.tensor([[3.0, 2.0], [3.0, 2.0]]) + 1e-5)  # min(4, 3) and min(2, 3)
    assert torch.all(delta > torch.tensor([[0.0, 1.5], [2.5, 1.5]]))  # x0 is clamped at the edge
    assert moved.min() >= 0


@pytest.mark.parametrize("change, message", [
    ({"prompt": "none"}, "needs bbox, click or mask"),
    ({"hparams": {"prompt_frq": 2}}, "did you mean 'prompt_freq'"),
    ({"hparams": {"max_cond_frames": 1}}, "max_cond_frames"),
    ({"hparams": {"checkpoint_keeps_attention": "yes"}}, "checkpoint_keeps_attention"),
    ({"hparams": {"compile": True}}, "compile: needs checkpoint_keeps_attention: false"),
    ({"dataset": "refuge"}, "btcv"),
    ({"hparams": {"loss": "sam3"}}, "did you mean 'sam2'"),
    ({"hparams": {"multimask_loss": "yes"}}, "multimask_loss"),
    ({"hparams": {"iou_weight": -1.0}}, "iou_weight"),
    ({"hparams": {"box_jitter": 0.5}}, "box_jitter"),
    ({"hparams": {"prompted_only": 1}}, "prompted_only"),
])
def test_check_rejects_bad_input(btcv_slices, tmp_path, change, message):
    """runner.check: the model kind's dataset and prompt (registry), then the trainer's own check."""
    base = dict(model="sam2-3d", variant="hiera_t", dataset="btcv", data_path=str(btcv_slices),
                output_root=str(tmp_path), prompt="bbox", hparams={"sam_ckpt": "none", "image_size": SIZE})
    with pytest.raises(InputError, match=message):
        runner.check(Task(**{**base, **change}))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("mode, extra", [("train3d", ["--frames", "4", "--organs", "3", "--trainable",
                                                        "decoder+memory"]),
                                          ("infer3d", ["--frames", "6", "--organs", "2"])])
def test_benchmark_modes_smoke(mode, extra, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sam2.py"
    spec = importlib.util.spec_from_file_location("bench_sam2", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    profile = ["--profile", str(tmp_path / "ops.txt")] if mode == "train3d" else []
    argv = ["--mode", mode, "--config", "sam2_hiera_t", "--image-size", str(SIZE), "--steps", "1",
            "--warmup", "0", "--device", "cpu", "--out", str(out), *profile, *extra]
    assert bench.main(argv) == 0
    import json

    record = json.loads(out.read_text())
    assert record["mode"] == mode and record["slices_per_s"] > 0 and record["peak_mem_gb"] > 0
    assert record["tflop_per_run"] > 0 and record["achieved_tflops"] > 0
    # host figures: a slice runs SAM2's heads and memory (hundreds of ops) on the host's time
    assert record["aten_ops_per_step"] > 100 and record["host_seconds_per_step"] > 0
    # eager: every host op is an operator (no compiled kernel), counted once from the profiler
    assert record["compiled_kernels_per_step"] == 0
    assert record["aten_ops_per_step"] == record["host_ops_per_step"]
    if profile:
        assert record["profile_top"] and "Self CPU" in (tmp_path / "ops.txt").read_text()
    else:
        assert record["profile_top"] is None


def _label_clip() -> np.ndarray:
    """Six 64 px slices: organs 1, 3, 6 present on some prompt slices, absent on others."""
    label = np.zeros((6, SIZE, SIZE), np.uint8)
    label[0, 5:20, 7:30] = 1
    label[0, 40:63, 0:10] = 3
    label[2, 0:64, 60:64] = 1
    label[4, 10:12, 10:50] = 3
    label[4, 30, 30] = 6
    return label


@pytest.mark.parametrize("kind", ["bbox", "click", "mask"])
def test_device_prompts_equal_per_organ_prompts(kind):
    from medsam2_hpc.inference.predict import object_prompts, prompt_from_mask
    from medsam2_hpc.trainers.sam2.step_3d import clip_organs, clip_prompts

    label = _label_clip()
    organs = clip_organs(torch.from_numpy(label).long())
    assert organs == [1, 3, 6]
    fast = clip_prompts(torch.from_numpy(label).long(), organs, kind, 2, np.random.default_rng(0),
                        torch.device("cpu"))
    rng = np.random.default_rng(0)  # same draws, in the same order, as the fast path
    for t in range(0, 6, 2):
        ref = object_prompts([prompt_from_mask(label[t] == o, kind, rng) for o in organs], (SIZE, SIZE),
                             SIZE, "cpu")
        for name in ("use_mask", "masks", "point_coords", "point_labels"):
            got, want = getattr(fast[t], name), getattr(ref, name)
            assert (got is None) == (want is None), (t, name)
            if want is not None:
                assert got.dtype == want.dtype and torch.equal(got, want), (t, name)
        # the groups it plans are the ones ObjectPrompts would find
        assert [(i.tolist(), kind, n) for i, kind, n in fast[t].groups()] == \
            [(i.tolist(), kind, n) for i, kind, n in ref.groups()], t


def _fused_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
                   ) -> torch.Tensor:
    """Dropout as CUDA runs it (the fused ``native_dropout``; the CPU fills a mask in place)."""
    return torch.native_dropout(x, p, training)[0] if training and p > 0 else x


def _clip_grads(model, clip, propagator):
    """(loss, gradients by name, FLOPs of the backward pass) of one clip, dropout seeded alike."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = clip_loss(propagator, clip, "bbox", 2, MultimaskLoss(make_loss("bce")),
                          np.random.default_rng(0), torch.device("cpu"))
    _, flops = count_flops(parts["loss"].backward)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return parts["loss"].detach(), grads, flops


@pytest.mark.parametrize("dropout", ["cpu", "gpu-like"])
def test_activation_checkpointing_keeps_loss_and_gradients(btcv_slices, dropout, monkeypatch):
    """Recomputing in backward (the default split, with the attention kept or recomputed too) gives
    the same loss and gradients as storing every activation.

    Train mode under bf16 autocast. "cpu": the CPU's dropout (mask drawn in place, recomputed
    from the replayed random state; attention with dropout unfused). "gpu-like": dropout as the
    fused kernel CUDA uses and attention through the fused kernel, both kept by the selective
    recompute; the CPU's fused attention has no dropout, so attention dropout is off there.
    """
    clip = BTCVClips(BTCVVolumes(btcv_slices, "train"), 4, SIZE)[8]
    model = _tiny_model()
    set_trainable(model, "decoder+memory")
    model.train()
    if dropout == "gpu-like":
        monkeypatch.setattr(torch.nn.functional, "dropout", _fused_dropout)
        for module in model.memory_attention.modules():
            if hasattr(module, "dropout_p"):
                monkeypatch.setattr(module, "dropout_p", 0.0)
    settings = [("plain", False, True), ("full", True, False), ("selective", True, True)]
    runs = {name: _clip_grads(model, clip, VideoPropagator(model, checkpoint=ckpt, keep_attention=keep))
            for name, ckpt, keep in settings}
    loss_plain, grads_plain, flops_plain = runs["plain"]
    assert any(n.startswith("memory_attention") for n in grads_plain)
    for name in ("full", "selective"):
        loss, grads, _ = runs[name]
        torch.testing.assert_close(loss, loss_plain)
        assert grads.keys() == grads_plain.keys()
        for key, grad in grads_plain.items():
            torch.testing.assert_close(grads[key], grad, atol=1e-5, rtol=1e-4, msg=f"{name}: {key}")
    if dropout == "gpu-like":  # the kept attention is not run again: fewer FLOPs than a full recompute
        assert flops_plain < runs["selective"][2] < runs["full"][2]



def test_backward_recomputes_all_but_the_tracked_slices_decoder(btcv_slices):
    """The 24 GiB budget's split (sam2_video's docstring): the backward pass runs each tracked
    slice's memory attention and memory encoder again, and the prompted batch's decoder and memory
    encoder; the tracked slices' decoder activations are stored, so their decoder runs once."""
    clip = BTCVClips(BTCVVolumes(btcv_slices, "train"), 4, SIZE)[8]
    model = _tiny_model()
    set_trainable(model, "decoder+memory")
    model.train()
    calls: dict[str, int] = {}
    for name in ("memory_attention", "sam_mask_decoder", "memory_encoder"):
        getattr(model, name).register_forward_pre_hook(  # a recompute stops once it has what backward needs
            lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    parts = clip_loss(VideoPropagator(model, checkpoint=True), clip, "bbox", 2,
                      MultimaskLoss(make_loss("bce")), np.random.default_rng(0), torch.device("cpu"))
    forward, tracked = dict(calls), 2  # slices 1 and 3 (0 and 2 prompted, one batch)
    assert forward == {"memory_attention": tracked, "sam_mask_decoder": tracked + 1,
                       "memory_encoder": tracked + 1}, forward
    calls.clear()
    parts["loss"].backward()
    # memory encoder: the prompted batch's and slice 1's (slice 3's memory is read by no slice)
    assert calls == {"memory_attention": tracked, "sam_mask_decoder": 1, "memory_encoder": 2}, calls

def test_selective_recompute_keeps_every_op_that_draws_random_numbers():
    """The GPU's attention kernels and fused dropout are kept (a recompute that skipped one and
    re-ran another would draw from a shifted random stream); in-place draws and the rest are
    recomputed. Checked on the op list, since the GPU kernels cannot run here."""
    from torch.utils.checkpoint import CheckpointPolicy

    from medsam2_hpc.models.sam2_video import _save_seeded_ops

    aten = torch.ops.aten
    kept = [aten._scaled_dot_product_flash_attention.default,
            aten._scaled_dot_product_efficient_attention.default,
            aten._scaled_dot_product_cudnn_attention.default, aten.native_dropout.default,
            aten._scaled_dot_product_flash_attention_for_cpu.default]
    recomputed = [aten.bernoulli_.float, aten.mm.default, aten.addmm.default, aten._to_copy.default]
    assert all(_save_seeded_ops(None, op) is CheckpointPolicy.MUST_SAVE for op in kept)
    assert all(_save_seeded_ops(None, op) is CheckpointPolicy.PREFER_RECOMPUTE for op in recomputed)


def _propagate_recording_kernels(prop: VideoPropagator, images, prompts) -> tuple[dict, set[str]]:
    """Masks of 3 slices, and the attention kernels the profiler saw run."""
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = dict(prop.propagate(prop.encode(images), prompts, 3, 2))
    return out, {e.name for e in prof.events() if "scaled_dot_product" in e.name}


def test_attention_kernel_choice_keeps_predictions():
    """Both settings against PyTorch's math kernel, a separate implementation of attention.

    On the CPU both settings run the fused CPU kernel (no cuDNN there: "cudnn" falls back), so
    each is compared with the math kernel rather than with the other; the profiler shows that
    the kernels compared really differ. Tolerance: 1e-4 on the mask logits after 3 slices of
    propagation (float32 sums taken in another order).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = _tiny_model(2).eval()
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    prompts = {1: ObjectPrompts(torch.zeros(2, dtype=torch.bool), None,
                                torch.tensor([[[5.0, 5.0], [30.0, 30.0]], [[20.0, 25.0], [50.0, 45.0]]]),
                                torch.tensor([[2, 3], [2, 3]], dtype=torch.int32))}
    with sdpa_kernel([SDPBackend.MATH]):
        reference, math_kernels = _propagate_recording_kernels(VideoPropagator(model), images, prompts)
    assert any("math" in k for k in math_kernels) and not any("flash" in k for k in math_kernels)
    for attention in ("default", "cudnn"):
        prop = VideoPropagator(model, attention=attention)
        out, kernels = _propagate_recording_kernels(prop, images, prompts)
        assert any("flash_attention_for_cpu" in k for k in kernels), (attention, kernels)
        for t in range(3):
            torch.testing.assert_close(out[t].high_res, reference[t].high_res, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="attention 'cudnnn'"):
        VideoPropagator(model, attention="cudnnn")


@pytest.mark.parametrize("kind", ["bbox", "click", "mask"])
def test_training_step_makes_no_host_sync(kind):
    """From the host-side plan (organs, prompts) on, the step never waits for the device.

    HostSyncDetector (tests/host_syncs.py) records scalar reads, data-dependent shapes, copies to
    the host and blocking uploads; forward, backward and the checkpoint's recompute run under it.
    """
    from medsam2_hpc.trainers.sam2.step_3d import clip_prompts, prompt_slices, propagated_loss
    from tests.host_syncs import HostSyncDetector

    clip = {"image": torch.rand(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)),
            "label": torch.from_numpy(_label_clip()).long()}
    model = _tiny_model()
    set_trainable(model, "decoder+memory")
    model.train()
    propagator = VideoPropagator(model, checkpoint=True)
    organs = clip_organs(clip["label"][prompt_slices(6, 2)])
    prompts = clip_prompts(clip["label"], organs, kind, 2, np.random.default_rng(0), torch.device("cpu"))
    assert any(p.use_mask.any() for p in prompts.values()) or kind == "mask"  # absent organs too
    with HostSyncDetector() as syncs:
        parts = propagated_loss(propagator, clip, organs, prompts, MultimaskLoss(make_loss("bce")),
                                torch.device("cpu"))
        parts["loss"].backward()
    assert syncs.events == []
    assert torch.isfinite(parts["loss"])
    assert model.memory_attention.layers[0].self_attn.q_proj.weight.grad is not None
    with HostSyncDetector() as syncs:  # and it sees the kinds of calls it is there for
        x = torch.arange(4.0)
        bool(x.any()), x[x > 1], x.tolist()
    assert [call for call, _ in syncs.events] == ["aten._local_scalar_dense.default", "aten.index.Tensor",
                                                  "tolist"]


def test_eval_computes_the_objects_shared_image_work_once():
    """The memory encoder's image projection and layer 0's self-attention of the memory attention."""
    model = _tiny_model(1).eval()
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(5.0)
    prop = VideoPropagator(model)
    proj = model.memory_encoder.pix_feat_proj
    frames, k = 4, 3
    images = torch.rand(frames, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[[5, 5], [30, 30]], [[20, 25], [50, 45]], [[2, 35], [25, 60]]], dtype=torch.float)
    prompts = {1: ObjectPrompts(torch.zeros(k, dtype=torch.bool), None, boxes,
                                torch.tensor([[2, 3]] * k, dtype=torch.int32))}
    batches, self_attn = [], []
    proj.register_forward_hook(lambda module, args, out: batches.append((args[0].shape[0], out.stride(0))))
    model.memory_attention.layers[0].self_attn.register_forward_hook(
        lambda module, args, out: self_attn.append(out.shape[0]))
    with torch.no_grad():
        feats = prop.encode(images)
        shared = dict(prop.propagate(feats, prompts, frames, k))
        proj.__class__ = torch.nn.Conv2d  # as before: one convolution per object
        model.memory_attention.__class__ = MemoryAttention  # and Meta's memory attention
        per_object = dict(prop.propagate(feats, prompts, frames, k))
    # all objects in both runs: one row expanded (stride 0) when shared, k computed rows before
    assert batches[:frames] == [(k, 0)] * frames
    assert all(n == k and stride > 0 for n, stride in batches[frames:])
    assert self_attn == [1] * (frames - 1) + [k] * (frames - 1)  # the prompted slice reads no memory
    for t in range(frames):
        torch.testing.assert_close(shared[t].high_res, per_object[t].high_res, atol=1e-6, rtol=0)
        torch.testing.assert_close(shared[t].object_score, per_object[t].object_score, atol=1e-6, rtol=0)


@pytest.mark.parametrize("max_cond, stride, cond, frames, ptrs, paired", [
    (-1, 1, [4], 11, 16, 0), (2, 1, [2, 5, 8], 11, 16, 0), (-1, 2, [3, 7], 11, 16, 0),
    (-1, 1, [8], 24, 4, 2), (2, 1, [6, 9, 14], 22, 4, 4)],
    ids=["one_prompt", "unselected_cond", "stride2", "lockstep", "lockstep_unselected_cond"])
def test_eval_key_cache_and_lockstep_give_what_metas_memory_read_gives(max_cond, stride, cond, frames, ptrs,
                                                                       paired, monkeypatch):
    """Eval (per-frame keys projected and rotated once, the temporal term added per read; the
    reverse sweep in lockstep behind the forward one) against Meta's
    ``_prepare_memory_conditioned_features`` in SAM2's order, forward and reverse, with conditioning
    frames left out of the attention (max_cond_frames), a memory stride, and fewer object
    pointers (a shorter reach, so reverse slices pair with forward ones in a short volume)."""
    model = _tiny_model(1).eval()
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(5.0)
    model.memory_temporal_stride_for_eval = stride
    model.max_obj_ptrs_in_encoder = ptrs
    prop = VideoPropagator(model, max_cond_frames=max_cond)
    k = 3
    images = torch.rand(frames, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[[5, 5], [30, 30]], [[20, 25], [50, 45]], [[2, 35], [25, 60]]], dtype=torch.float)
    prompts = {c: ObjectPrompts(torch.zeros(k, dtype=torch.bool), None, boxes + c % 5,
                                torch.tensor([[2, 3]] * k, dtype=torch.int32)) for c in cond}
    projected, slices_per_pass = [], []
    project = KeyCache._project
    monkeypatch.setattr(KeyCache, "_project", lambda self, x: projected.append(x.shape[0] * x.shape[1])
                        or project(self, x))
    model.memory_attention.layers[0].cross_attn_image.k_proj.register_forward_hook(
        lambda module, args, out: projected.append(out.shape[0] * out.shape[1]))
    model.memory_attention.layers[0].self_attn.register_forward_hook(
        lambda module, args, out: slices_per_pass.append(out.shape[0]))
    with torch.no_grad():
        feats = prop.encode(images)
        ours = dict(prop.propagate(feats, prompts, frames, k))
        rows_cached, projected[:] = sum(projected), []
        model.memory_attention.__class__ = MemoryAttention  # Meta's read, keys projected at every read
        assert prop._key_cache() is None
        meta = dict(prop.propagate(feats, prompts, frames, k))
    assert rows_cached < sum(projected)  # frames read again take their keys from the cache
    assert slices_per_pass[:frames - len(cond) - paired].count(2) == paired  # forward and reverse in one pass
    assert sorted(ours) == list(range(frames))
    for t in range(frames):
        torch.testing.assert_close(ours[t].low_res, meta[t].low_res, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours[t].object_score, meta[t].object_score, atol=1e-5, rtol=0)
        assert torch.equal(ours[t].high_res > 0, meta[t].high_res > 0)
