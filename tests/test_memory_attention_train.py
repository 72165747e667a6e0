"""The memory attention's training path (:class:`TrainMemoryAttention`) computes what Meta's does.

Hiera-T with random weights at 64 px (4 x 4 stride-16 features), against the same weights in
Meta's classes (``MemoryAttention``, ``RoPEAttention``). Train mode. Outputs and gradients must
agree to fp32 rounding. The comparisons run in float64 (both paths rotate in fp32, as Meta's does,
so they agree to about 1e-7): in float32 the rounding flips a few ReLU units near zero, each a
discrete change of the gradients (1e-3 of their norm seen here, outputs equal to 1e-6). With
dropout on, the CPU draws every mask in Meta's order and shapes (attention weights, then
dropout1/2, the MLP's and dropout3), so the same seed gives the same dropped-out output: each
dropout one ``native_dropout`` on every device, attention with dropout composed around it on the CPU.
Host ops are counted with the benchmark's OpCounter (deterministic counts).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from sam2.modeling.memory_attention import MemoryAttention
from torch.utils.checkpoint import checkpoint

from medsam2_hpc.engine.benchmark import OpCounter
from medsam2_hpc.models.memory_attention import TrainMemoryAttention, _attention, _drop, use_fused_training
from medsam2_hpc.models.sam2 import build_sam2_model
from medsam2_hpc.models.sam2_video import _SAVE_SEEDED, VideoPropagator

SIZE, OBJECTS = 64, 3
N = (SIZE // 16) ** 2


def _models(dtype: torch.dtype = torch.float64) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Meta's memory attention and ours (same weights)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = build_sam2_model("sam2_hiera_t", None, image_size=SIZE, allow_random=True,
                                low_rank_values=False)
        ours = build_sam2_model("sam2_hiera_t", None, image_size=SIZE, allow_random=True)
    ours.load_state_dict(meta.state_dict())
    assert use_fused_training(ours) and type(ours.memory_attention) is TrainMemoryAttention
    return meta.memory_attention.train().to(dtype), ours.memory_attention.train().to(dtype)


def _no_dropout(attention: torch.nn.Module) -> None:
    for module in attention.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout_p"):
            module.dropout_p = 0.0


def _inputs(frames: int, ptrs: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor | int]:
    g = torch.Generator().manual_seed(1)
    nk = frames * N + ptrs

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()

    return {"curr": rand(N, OBJECTS, 256), "curr_pos": rand(N, OBJECTS, 256), "memory": rand(nk, OBJECTS, 64),
            "memory_pos": rand(nk, OBJECTS, 64), "num_obj_ptr_tokens": ptrs}


def _run(attention: torch.nn.Module, inputs: dict, seed: int = 2) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and the gradients of a random projection of it: inputs first, then every parameter."""
    torch.manual_seed(seed)
    out = attention(**inputs)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)
    tensors = [v for v in inputs.values() if torch.is_tensor(v)] + list(attention.parameters())
    return out.detach(), list(torch.autograd.grad((out * probe).sum(), tensors))


def _assert_grads_close(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    for g, e in zip(got, expected, strict=True):
        error = torch.linalg.vector_norm(g - e)
        assert error <= 1e-5 * torch.linalg.vector_norm(e) + 1e-12, float(error)


@pytest.mark.parametrize("frames, ptrs", [(1, 0), (1, 16), (3, 0), (3, 16)])
def test_outputs_and_gradients_match_meta_without_dropout(frames: int, ptrs: int) -> None:
    meta, ours = _models()
    _no_dropout(meta)
    _no_dropout(ours)
    inputs = _inputs(frames, ptrs)
    out_meta, grads_meta = _run(meta, inputs)
    out_ours, grads_ours = _run(ours, inputs)
    assert out_ours.shape == out_meta.shape == (N, OBJECTS, 256)
    torch.testing.assert_close(out_ours, out_meta, rtol=1e-5, atol=1e-5)
    _assert_grads_close(grads_ours, grads_meta)


def test_dropout_draws_metas_masks_and_changes_the_output() -> None:
    meta, ours = _models()
    inputs = _inputs(2, 16)
    out_meta, grads_meta = _run(meta, inputs)
    out_ours, grads_ours = _run(ours, inputs)
    torch.testing.assert_close(out_ours, out_meta, rtol=1e-5, atol=1e-5)
    _assert_grads_close(grads_ours, grads_meta)
    assert not torch.allclose(_run(ours, inputs, seed=3)[0], out_ours, atol=1e-3)  # other masks
    _no_dropout(ours)
    assert not torch.allclose(_run(ours, inputs)[0], out_ours, atol=1e-3)  # dropout acted


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_op_dropout_draws_nn_dropouts_mask(dtype: torch.dtype) -> None:
    """``native_dropout`` on the CPU: the mask ``nn.Dropout`` (four ops there) draws, bit for bit."""
    x = torch.randn(37, 300, dtype=dtype)
    dropout = torch.nn.Dropout(0.1).train()
    torch.manual_seed(4)
    expected = dropout(x)
    with OpCounter() as ops:
        torch.manual_seed(4)
        got = _drop(dropout, x)
    assert torch.equal(got, expected) and ops.counts == {"aten.native_dropout": 1}
    assert 0 < (got == 0).sum() < x.numel() and torch.equal(_drop(dropout.eval(), x), x)


def test_composed_attention_draws_sdpas_masks() -> None:
    """The CPU's attention with dropout, composed: SDPA's math path, same seed, float64, with gradients."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(3, 1, n, d, generator=g, dtype=torch.float64, requires_grad=True)
               for n, d in ((20, 16), (36, 16), (36, 8)))
    probe = torch.randn(3, 1, 20, 8, generator=g, dtype=torch.float64)
    results = []
    for composed in (False, True):
        torch.manual_seed(5)
        if composed:
            out = _attention(q.squeeze(1) / 4, k.squeeze(1).transpose(1, 2), v.squeeze(1), 0.3).unsqueeze(1)
        else:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.3)
        results.append([out, *torch.autograd.grad((out * probe).sum(), (q, k, v))])
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.manual_seed(6)  # another seed, other masks: the comparison can fail
    other = _attention(q.squeeze(1) / 4, k.squeeze(1).transpose(1, 2), v.squeeze(1), 0.3).unsqueeze(1)
    assert not torch.allclose(other, results[0][0])


def test_sdpa_layout_with_dropout_draws_metas_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The layout a GPU runs (SDPA with dropout, (B, 1, N, d)), forced on the CPU, where SDPA's math
    path draws as Meta's: the same output and gradients under the same seed."""
    meta, ours = _models()
    monkeypatch.setattr(TrainMemoryAttention, "_drops_attention", lambda self: False)
    inputs = _inputs(2, 16)
    out_meta, grads_meta = _run(meta, inputs)
    out_ours, grads_ours = _run(ours, inputs)
    torch.testing.assert_close(out_ours, out_meta, rtol=1e-5, atol=1e-5)
    _assert_grads_close(grads_ours, grads_meta)


def test_selective_recompute_replays_the_same_ops() -> None:
    """The propagator's selective checkpoint around our path: the same output and gradients, dropout
    on; every dropout (one ``native_dropout``, seeded) is kept, so the recompute draws nothing, as on
    a GPU."""
    _, ours = _models()
    inputs = _inputs(2, 16)
    plain_out, plain_grads = _run(ours, inputs)

    class Checkpointed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = ours

        def forward(self, **kwargs: torch.Tensor | int) -> torch.Tensor:
            return checkpoint(lambda *args: ours(*args, num_obj_ptr_tokens=kwargs["num_obj_ptr_tokens"]),
                              kwargs["curr"], kwargs["memory"], kwargs["curr_pos"], kwargs["memory_pos"],
                              use_reentrant=False, context_fn=_SAVE_SEEDED)

    with OpCounter() as ops:
        out, grads = _run(Checkpointed(), inputs)
    torch.testing.assert_close(out, plain_out, rtol=0, atol=1e-6)
    _assert_grads_close(grads, plain_grads)
    layers = len(ours.layers)
    assert ops.counts["aten.native_dropout"] == 6 * layers  # forward only: none in the recompute
    assert ops.counts["aten.native_dropout_backward"] == 6 * layers and "aten.bernoulli_" not in ops.counts


def test_bf16_autocast_keeps_metas_dtypes_and_tolerance() -> None:
    meta, ours = _models(torch.float32)
    _no_dropout(meta)
    _no_dropout(ours)
    inputs = _inputs(2, 16, torch.float32)
    with torch.no_grad():
        reference = meta(**inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_meta = meta(**inputs)
            out_ours = ours(**inputs)
    assert out_ours.dtype == out_meta.dtype
    err_meta = (out_meta.float() - reference).abs().max()
    err_ours = (out_ours.float() - reference).abs().max()
    assert err_ours <= 2 * err_meta + 1e-2  # no worse than Meta's own path in bf16


def test_host_ops_of_a_forward_and_backward_fell() -> None:
    """Counted, not timed: Meta's path took 641 + 909 aten ops here (Hiera-T, 4 layers, 64 px, three
    memory frames and 16 pointer tokens, backward into the parameters, dropout on); ours 234 + 614
    (424 + 702 before each dropout was one op and the CPU's attention with dropout composed)."""
    counts = {}
    for name, attention in zip(("meta", "ours"), _models(torch.float32), strict=True):
        inputs = _inputs(3, 16, torch.float32)
        attention(**inputs)  # ours builds its RoPE tables on the first call
        with OpCounter() as forward:
            out = attention(**inputs)
        with OpCounter() as backward:
            out.sum().backward()
        counts[name] = forward.total + backward.total
    assert counts["ours"] <= 860
    assert counts["meta"] >= 1.7 * counts["ours"]


def test_propagator_installs_it_for_training_only_where_it_fits() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_sam2_model("sam2_hiera_t", None, image_size=SIZE, allow_random=True)
    keys = model.state_dict().keys()
    VideoPropagator(model)
    assert type(model.memory_attention) is TrainMemoryAttention and model.state_dict().keys() == keys
    assert not use_fused_training(model)  # once
    meta, _ = _models()
    assert not use_fused_training(_wrap(meta))  # Meta's cross-attention values (not the rank-64 path)
    _, ours = _models()
    ours.__class__ = MemoryAttention
    ours.layers[1].pos_enc_at_attn = True  # positional encoding on q and k: no fused q/k/v
    assert not use_fused_training(_wrap(ours)) and type(ours) is MemoryAttention


def _wrap(attention: torch.nn.Module) -> torch.nn.Module:
    """A model holding ``attention`` as its memory attention."""
    model = torch.nn.Module()
    model.memory_attention = attention
    return model
