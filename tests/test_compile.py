"""``VideoPropagator(compile=True)`` trains as eager does, its compiled parts running compiled.

Hiera-T with random weights at 64 px, a 4-slice clip (2 prompted, 2 tracked), train mode with
dropout, the trainer's own loss (``clip_loss``). Compiled with dynamic shapes on the CPU (the
inductor's C++ kernels), in a cache under the test's tmp dir: minutes on this machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam2_hpc.losses import MultimaskLoss, make_loss
from medsam2_hpc.models.sam2_video import VideoPropagator
from medsam2_hpc.trainers.sam2.step_3d import clip_loss
from tests.tiny_clips import disc_clip, tiny_sam2

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SIZE, FRAMES = 64, 4
COMPILED = ("memory_attention", "memory_encoder", "sam_mask_decoder")


def _model() -> torch.nn.Module:
    return tiny_sam2(SIZE)


def _clip() -> dict[str, torch.Tensor]:
    return disc_clip(SIZE, FRAMES, [(16, 16), (20, 45), (47, 30)], radius=9)


def _loss_and_grads(checkpoint: bool, compile: bool, calls: dict[str, int]
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training step's loss and gradients; ``calls`` counts the calls of each part's compiled
    entry point (a hook inside the compiled region would itself be compiled and guarded)."""
    model = _model()
    prop = VideoPropagator(model, checkpoint=checkpoint, keep_attention=False, compile=compile)
    for name in COMPILED if compile else ():
        module = getattr(model, name)
        module._compiled_call_impl = _counted(module._compiled_call_impl, calls, name)
    torch.manual_seed(1)  # dropout: both draw the same masks in the same order
    loss = clip_loss(prop, _clip(), "bbox", 2, MultimaskLoss(make_loss("bce")), np.random.default_rng(0),
                     torch.device("cpu"))["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _counted(fn, calls: dict[str, int], name: str):
    def call(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return fn(*args, **kwargs)
    return call


@pytest.mark.slow  # 8 to 28 minutes on the 2 shared cores: the inductor compiles C++ kernels
def test_compiled_training_step_gives_the_eager_loss_and_gradients(tmp_path):
    from torch._dynamo.utils import counters
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    torch._dynamo.reset()
    counters.clear()
    # the configs' own patch, not monkeypatch: undoing a monkeypatch deletes the setting from
    # torch's config module (later compiles in the process then fail: it "does not exist")
    try:
        with temporary_cache_dir(str(tmp_path)), \
                torch._inductor.config.patch(fallback_random=True), \
                torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            # eager's dropout draws; no silent fallback to eager (running out of recompilations raises)
            for checkpoint in (False, True):  # none, and plain checkpointing (the recompute compiled too)
                loss, grads = _loss_and_grads(checkpoint, False, {})
                calls: dict[str, int] = {}
                compiled_loss, compiled_grads = _loss_and_grads(checkpoint, True, calls)
                assert all(calls.get(name) for name in COMPILED), calls  # each part ran compiled
                torch.testing.assert_close(compiled_loss, loss, atol=1e-6, rtol=1e-5)
                assert compiled_grads.keys() == grads.keys()
                assert any(n.startswith("sam_mask_decoder.transformer") for n in grads)
                # fp32 sums in another order; the decoder's key biases get rounding noise
                # (1e-10) only: their true gradient is zero, as softmax ignores a shift per query
                for name, grad in grads.items():
                    error = torch.linalg.vector_norm(compiled_grads[name] - grad)
                    assert error <= 1e-3 * torch.linalg.vector_norm(grad) + 1e-8, (name, float(error))
        assert not counters["graph_break"], dict(counters["graph_break"])
    finally:
        torch._dynamo.reset()
