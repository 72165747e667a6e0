"""The rank-64 value path of the memory cross-attention computes what Meta's RoPEAttention does.

Hiera-T with random weights at 64 px (4 x 4 stride-16 features), two memory frames plus object
pointers (the keys RoPE leaves out). Train mode compares under the same seed: the CPU runs
attention with dropout unfused, drawing one mask of shape (B, heads, N_q, N_k) whatever the
value width, so both paths drop the same weights (checked to make a difference).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from medsam2_hpc.errors import InputError
from medsam2_hpc.models.memory_attention import (
    EvalMemoryAttention,
    LowRankValueAttention,
    use_eval_shortcuts,
)
from medsam2_hpc.models.sam2 import build_sam2_model

SIZE = 64


def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = build_sam2_model("sam2_hiera_t", None, image_size=SIZE, allow_random=True,
                                low_rank_values=False)
    ours = copy.deepcopy(meta)
    for layer in ours.memory_attention.layers:
        layer.cross_attn_image.__class__ = LowRankValueAttention
    return meta, ours


def _inputs(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor | int]:
    g = torch.Generator().manual_seed(1)
    n, b, ptrs = (SIZE // 16) ** 2, 3, 8
    return {"curr": torch.randn(n, b, 256, generator=g, dtype=dtype, requires_grad=True),
            "curr_pos": torch.randn(n, b, 256, generator=g, dtype=dtype),
            "memory": torch.randn(2 * n + ptrs, b, 64, generator=g, dtype=dtype, requires_grad=True),
            "memory_pos": torch.randn(2 * n + ptrs, b, 64, generator=g, dtype=dtype),
            "num_obj_ptr_tokens": ptrs}


def _run(model: torch.nn.Module, inputs: dict, seed: int = 2) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(seed)
    out = model.memory_attention(**inputs)
    params = [p for p in model.memory_attention.parameters()]
    grads = torch.autograd.grad(out.square().mean(), [inputs["curr"], inputs["memory"], *params])
    return out.detach(), list(grads)


def test_builder_installs_the_rank64_path_on_cross_attention_only() -> None:
    meta, _ = _models()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = build_sam2_model("sam2_hiera_t", None, image_size=SIZE, allow_random=True)
    for layer, meta_layer in zip(built.memory_attention.layers, meta.memory_attention.layers, strict=True):
        assert type(layer.cross_attn_image) is LowRankValueAttention
        assert type(layer.self_attn) is type(meta_layer.self_attn)  # 256-wide values: unchanged
    assert built.state_dict().keys() == meta.state_dict().keys()  # checkpoints load either way


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train_dropout"])
def test_forward_and_gradients_match_meta_in_fp32(train: bool) -> None:
    meta, ours = _models()
    meta.memory_attention.train(train)
    ours.memory_attention.train(train)
    inputs = _inputs()
    out_meta, grads_meta = _run(meta, inputs)
    out_ours, grads_ours = _run(ours, inputs)
    torch.testing.assert_close(out_ours, out_meta, rtol=1e-5, atol=1e-5)
    for g_ours, g_meta in zip(grads_ours, grads_meta, strict=True):
        torch.testing.assert_close(g_ours, g_meta, rtol=1e-4, atol=1e-5)
    if train:  # dropout really acted: another seed draws other masks, so other outputs
        assert not torch.allclose(_run(ours, inputs, seed=3)[0], out_ours, atol=1e-3)


def test_dropout_row_sums_scale_the_bias_exactly_in_float64() -> None:
    """With a large bias and heavy dropout the ones column is what keeps the paths equal."""
    meta, ours = _models()
    attn_meta = meta.memory_attention.layers[0].cross_attn_image.double().train()
    attn_ours = ours.memory_attention.layers[0].cross_attn_image.double().train()
    for attn in (attn_meta, attn_ours):
        attn.dropout_p = 0.5
        torch.nn.init.constant_(attn.v_proj.bias, 3.0)
    g = torch.Generator().manual_seed(4)
    n = (SIZE // 16) ** 2
    q = torch.randn(2, n, 256, generator=g, dtype=torch.float64)
    kv = torch.randn(2, 2 * n + 4, 64, generator=g, dtype=torch.float64)
    torch.manual_seed(5)
    expected = attn_meta(q, kv, kv, num_k_exclude_rope=4)
    torch.manual_seed(5)
    got = attn_ours(q, kv, kv, num_k_exclude_rope=4)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_bf16_autocast_stays_within_bf16_tolerance() -> None:
    meta, ours = _models()
    meta.eval()
    ours.eval()
    inputs = _inputs()
    with torch.no_grad():
        reference = meta.memory_attention(**inputs).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_meta = meta.memory_attention(**inputs).float()
            out_ours = ours.memory_attention(**inputs).float()
    err_meta = (out_meta - reference).abs().max()
    err_ours = (out_ours - reference).abs().max()
    assert err_ours <= 2 * err_meta + 1e-2  # no worse than Meta's own path in bf16


def test_attention_microbenchmark_runs_tiny_on_the_cpu(tmp_path) -> None:
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_attention.py"
    spec = importlib.util.spec_from_file_location("bench_attention", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "attention.json"
    assert bench.main(["--tiny", "--seconds", "0.1", "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert set(record["cases"]) == {name for name, *_ in bench.CASES} and len(record["cases"]) == 8
    for case in record["cases"].values():
        assert case["backend"] in {"math", "cpu_flash"} and case["runs"] >= 2 and case["ms_per_fwd_bwd"] > 0
    # the CPU's fused kernel takes equal head dims without dropout: Meta's 256-wide values
    assert record["cases"]["cross_v256_p0.0"]["backend"] == "cpu_flash"


def test_compile_flag_compiles_in_place_keeping_checkpoint_keys() -> None:
    """Wiring only: compiling and running takes minutes on this CPU (compiled == eager to 2.4e-7 on a
    5-slice 64 px volume, checked by hand), so the benchmark's --compile times it on a GPU."""
    from medsam2_hpc.models.sam2_video import VideoPropagator
    from medsam2_hpc.options import config_from_dict
    from medsam2_hpc.trainers.sam2.train_3d import Sam2Config3D

    _, model = _models()
    keys = model.state_dict().keys()
    VideoPropagator(model)
    assert model.memory_attention._compiled_call_impl is None
    VideoPropagator(model, compile=True)
    assert model.memory_attention._compiled_call_impl is not None
    assert model.memory_encoder._compiled_call_impl is not None
    assert model.sam_mask_decoder._compiled_call_impl is not None
    assert model.state_dict().keys() == keys
    hparams = {"compile": True, "checkpoint_keeps_attention": False}
    assert config_from_dict(Sam2Config3D, hparams, "hparams").compile is True
    with pytest.raises(InputError, match="hparams.compile: needs checkpoint_keeps_attention: false"):
        config_from_dict(Sam2Config3D, {"compile": True}, "hparams")  # the selective recompute crashes


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_first_layer_self_attention_runs_once_for_expanded_rows(train: bool) -> None:
    """Objects' shared image features (a stride-0 view): layer 0's self-attention on one row in eval,
    the same outputs as Meta's per-object path; in training, Meta's path itself (dropout differs per row)."""
    meta, ours = _models()
    assert use_eval_shortcuts(ours) and type(ours.memory_attention) is EvalMemoryAttention
    assert ours.state_dict().keys() == meta.state_dict().keys()
    meta.memory_attention.train(train)
    ours.memory_attention.train(train)
    inputs = _inputs()
    k = inputs["curr"].shape[1]
    for name in ("curr", "curr_pos"):  # one slice's features, expanded over the objects
        inputs[name] = inputs[name][:, :1].detach().expand(-1, k, -1)
    batches = []
    ours.memory_attention.layers[0].self_attn.register_forward_hook(
        lambda module, args, out: batches.append(out.shape[0]))
    torch.manual_seed(2)
    with torch.no_grad():
        expected = meta.memory_attention(**inputs)
        torch.manual_seed(2)
        got = ours.memory_attention(**inputs)
    assert batches == [k if train else 1]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(got[:, 0], got[:, 1], atol=1e-3)  # the memories make the objects differ
