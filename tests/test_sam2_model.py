"""models/sam2.py: every config builds, checkpoints load strictly, mismatches read as one line."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from medsam2_hpc.errors import InputError
from medsam2_hpc.models.sam2 import (
    CHECKPOINT_FILES,
    build_sam2_model,
    config_for_variant,
    default_checkpoint,
    describe_state,
    resolve_config,
    set_trainable,
    variant_of,
)
from medsam2_hpc.trainers.sam2.common import decode, encode


def _random(config: str = "sam2_hiera_t", image_size: int = 128) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_sam2_model(config, "none", image_size=image_size, allow_random=True)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return _random()


@pytest.fixture(scope="module")
def tiny_ckpt(tiny: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hiera-T checkpoint in Meta's layout (weights under 'model')."""
    path = tmp_path_factory.mktemp("ckpt") / "sam2_hiera_tiny.pt"
    torch.save({"model": tiny.state_dict()}, path)
    return path


# Meta's published sizes (millions of parameters); Large is built too (about 3 s on one core).
@pytest.mark.parametrize("config,millions", [
    ("sam2_hiera_t", 38.9), ("sam2_hiera_s", 46.0), ("sam2_hiera_b+", 80.8), ("sam2_hiera_l", 224.4),
])
def test_each_config_builds_with_meta_parameter_count(config: str, millions: float) -> None:
    model = _random(config, image_size=1024)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(millions, rel=0.01)
    assert model.image_size == 1024


def test_sam2_1_family_builds_and_differs_from_sam2() -> None:
    state = _random("sam2.1_hiera_t").state_dict()
    assert describe_state(state) == (12, 96, "sam2.1")


def test_names_resolve_and_map_to_meta_files() -> None:
    assert resolve_config("configs/sam2/sam2_hiera_b+.yaml") == "sam2_hiera_b+"
    assert config_for_variant("hiera_s") == "sam2_hiera_s"
    assert config_for_variant("sam2.1_hiera_l") == "sam2.1_hiera_l"
    assert variant_of("sam2_hiera_t") == "hiera_t"
    assert CHECKPOINT_FILES["sam2.1_hiera_b+"] == "sam2.1_hiera_base_plus.pt"
    assert len(CHECKPOINT_FILES) == 8
    with pytest.raises(InputError, match=r"-sam_config: 'sam2_hiera_x'.*did you mean"):
        resolve_config("sam2_hiera_x")


def test_small_image_size_runs_encoder_and_decoder(tiny: torch.nn.Module) -> None:
    feats = encode(tiny, torch.rand(2, 3, 128, 128))
    assert feats.sizes == [(32, 32), (16, 16), (8, 8)]
    embed = feats.tokens[-1].permute(1, 2, 0).reshape(2, 256, 8, 8) + 0
    coords = torch.tensor([[[40.0, 60.0]], [[10.0, 100.0]]])
    low, iou, obj = decode(tiny, embed, feats.high_res, coords, torch.ones(2, 1, dtype=torch.int32))
    # one click: SAM2 proposes three masks, each with an IoU estimate
    assert low.shape == (2, 3, 32, 32) and iou.shape == (2, 3) and obj.shape == (2, 1)


def test_2d_multimask_loss_trains_the_iou_head_and_every_mask_token() -> None:
    """The 2D trainer's decoder call and loss: a click proposes 3 masks; all of them and the IoU
    head get gradients (only the picked mask did before, and the IoU head none)."""
    from medsam2_hpc.losses import MultimaskLoss, make_loss

    torch.manual_seed(0)
    model = _random(image_size=64)
    set_trainable(model, "decoder")
    feats = encode(model, torch.rand(2, 3, 64, 64))
    embed = feats.tokens[-1].permute(1, 2, 0).reshape(2, 256, 4, 4)
    coords = torch.tensor([[[20.0, 30.0]], [[40.0, 10.0]]])
    low, iou, obj = decode(model, embed, feats.high_res, coords, torch.ones(2, 1, dtype=torch.int32))
    truth = torch.zeros(2, 16, 16)
    truth[:, 4:10, 3:12] = 1
    MultimaskLoss(make_loss("bce"))(low, iou, obj[:, 0], truth)["loss"].backward()
    head = model.sam_mask_decoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.iou_prediction_head.parameters())
    assert (head.mask_tokens.weight.grad.abs().sum(1) > 0).all()


def test_image_size_must_be_multiple_of_32() -> None:
    with pytest.raises(InputError, match="-image_size 100"):
        build_sam2_model("sam2_hiera_t", "none", image_size=100, allow_random=True)


def test_meta_and_training_checkpoints_load_strictly(tiny: torch.nn.Module, tiny_ckpt: Path,
                                                     tmp_path: Path) -> None:
    loaded = build_sam2_model("sam2_hiera_t", tiny_ckpt, image_size=256)  # weights do not depend on size
    for key, value in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # a TrainLoop payload (model + optimizer + loop state), saved from a DDP wrapper
    payload = {"model": {f"module.{k}": v for k, v in tiny.state_dict().items()},
               "optimizer": {}, "loop": {"epoch": 3}}
    torch.save(payload, tmp_path / "last.pt")
    again = build_sam2_model("sam2_hiera_t", tmp_path / "last.pt", image_size=128)
    assert torch.equal(again.no_mem_embed, tiny.no_mem_embed)


def test_wrong_size_names_the_config_that_fits(tiny_ckpt: Path) -> None:
    with pytest.raises(InputError) as err:
        build_sam2_model("sam2_hiera_s", tiny_ckpt, image_size=128)
    msg = str(err.value)
    assert "\n" not in msg
    assert "checkpoint has 12 blocks" in msg and "sam2_hiera_s has 16" in msg
    assert "pass -sam_config sam2_hiera_t" in msg and str(tiny_ckpt) in msg


def test_wrong_family_names_the_config_that_fits(tiny_ckpt: Path) -> None:
    expect = r"sam2 model, sam2.1_hiera_t is sam2.1: pass -sam_config sam2_hiera_t$"
    with pytest.raises(InputError, match=expect):
        build_sam2_model("sam2.1_hiera_t", tiny_ckpt, image_size=128)


def test_missing_key_and_foreign_files_are_one_line(tiny: torch.nn.Module, tmp_path: Path) -> None:
    state = dict(tiny.state_dict())
    state.pop("no_mem_embed")
    torch.save({"model": state}, tmp_path / "partial.pt")
    with pytest.raises(InputError, match="1 missing key.*no_mem_embed"):
        build_sam2_model("sam2_hiera_t", tmp_path / "partial.pt", image_size=128)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt: cannot be read"):
        build_sam2_model("sam2_hiera_t", tmp_path / "junk.pt", image_size=128)
    torch.save({"epoch": 3}, tmp_path / "noweights.pt")
    with pytest.raises(InputError, match="no SAM2 weights"):
        build_sam2_model("sam2_hiera_t", tmp_path / "noweights.pt", image_size=128)


def test_missing_checkpoint_and_random_weights_need_consent(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        build_sam2_model("sam2_hiera_t", tmp_path / "sam2_hiera_tiny.pt")
    with pytest.raises(InputError, match="-sam_ckpt none"):
        build_sam2_model("sam2_hiera_t", None)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        build_sam2_model("sam2_hiera_t", "none", image_size=128, allow_random=True)


def test_freezing_policy(tiny: torch.nn.Module) -> None:
    def trainable(module: torch.nn.Module) -> bool:
        return any(p.requires_grad for p in module.parameters())

    total = sum(p.numel() for p in tiny.parameters())
    assert set_trainable(tiny, "all") == total
    n_default = set_trainable(tiny)
    assert not trainable(tiny.image_encoder) and trainable(tiny.sam_mask_decoder)
    assert tiny.no_mem_embed.requires_grad and trainable(tiny.obj_ptr_proj)
    n_decoder = set_trainable(tiny, "decoder")
    assert not trainable(tiny.memory_attention) and trainable(tiny.sam_prompt_encoder)
    n_memory = set_trainable(tiny, "decoder+memory")
    assert trainable(tiny.memory_attention) and trainable(tiny.memory_encoder)
    assert not tiny.no_mem_embed.requires_grad
    assert n_decoder < n_memory < n_default < total
    with pytest.raises(InputError, match="trainable: 'decodr'.*did you mean 'decoder'"):
        set_trainable(tiny, "decodr")


def test_checkpoint_search_order_is_variable_then_image_then_checkout(tmp_path, monkeypatch) -> None:
    from medsam2_hpc import checkpoints

    baked, checkout = tmp_path / "baked", tmp_path / "checkout"
    monkeypatch.setattr(checkpoints, "BAKED_DIR", baked)
    monkeypatch.setattr(checkpoints, "CHECKOUT_DIR", checkout)
    monkeypatch.setenv(checkpoints.ENV_VAR, str(tmp_path / "mine"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"no sam2\.1_hiera_base_plus\.pt in .*mine, .*baked, .*checkout"):
        default_checkpoint("sam2.1_hiera_b+")
    for where in (checkout, baked, tmp_path / "mine"):
        where.mkdir()
        (where / "sam2.1_hiera_base_plus.pt").write_bytes(b"x")
        assert default_checkpoint("sam2.1_hiera_b+") == where / "sam2.1_hiera_base_plus.pt"
    (tmp_path / "checkpoints").mkdir()  # the working directory's checkpoints/ is never searched
    monkeypatch.delenv(checkpoints.ENV_VAR)
    assert default_checkpoint("sam2.1_hiera_b+") == baked / "sam2.1_hiera_base_plus.pt"
