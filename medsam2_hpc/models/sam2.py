"""Build SAM2 from Meta's configs and checkpoints, and choose what trains.

The ``sam2`` package ships both config families (``configs/sam2/sam2_hiera_*.yaml`` and
``configs/sam2.1/sam2.1_hiera_*.yaml``); we compose them through its Hydra setup rather than
copying them, so the architecture always matches the installed code. Loading is strict: a
checkpoint for another size or family fails with one line that says which config fits, where
Meta's ``build_sam2`` would raise a long key listing (and Medical-SAM2's ``-pretrain`` loaded
nothing with ``strict=False``).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from ..checkpoints import find_checkpoint
from ..engine.checkpoint import load_checkpoint
from ..errors import InputError
from ..options import look_up

__all__ = [
    "CONFIGS", "CHECKPOINT_FILES", "TRAINABLE_PARTS", "TrainableParts", "config_for_variant",
    "variant_of", "resolve_config", "default_checkpoint", "build_sam2_model", "load_sam2_weights",
    "describe_state", "set_trainable", "POSTPROCESS", "META_FILL_HOLE_AREA", "set_postprocess",
]

_SIZES = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}
# config name -> Hydra config path inside the sam2 package
CONFIGS: dict[str, str] = {
    **{f"sam2_hiera_{s}": f"configs/sam2/sam2_hiera_{s}.yaml" for s in _SIZES},
    **{f"sam2.1_hiera_{s}": f"configs/sam2.1/sam2.1_hiera_{s}.yaml" for s in _SIZES},
}
# config name -> file name of Meta's released checkpoint (checkpoints/download_ckpts.sh)
CHECKPOINT_FILES: dict[str, str] = {
    **{f"sam2_hiera_{s}": f"sam2_hiera_{n}.pt" for s, n in _SIZES.items()},
    **{f"sam2.1_hiera_{s}": f"sam2.1_hiera_{n}.pt" for s, n in _SIZES.items()},
}
# (trunk blocks, trunk embed dim) -> size letter: how a checkpoint reveals its config
_TRUNK_SHAPES = {(12, 96): "t", (16, 96): "s", (24, 112): "b+", (48, 144): "l"}
# parameters only the sam2.1 family has
_SAM21_KEYS = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight")

TrainableParts = Literal["decoder", "decoder+memory", "all-but-encoder", "all"]
TRAINABLE_PARTS: tuple[str, ...] = ("decoder", "decoder+memory", "all-but-encoder", "all")
_NO_CHECKPOINT = ("", "none", "None", "random")

# What ``sam2.build_sam.build_sam2_video_predictor(apply_postprocessing=True)`` adds to the
# config (sam2 1.1.0), as attribute -> value: fall back to the best of the 3 masks when the
# single mask is unstable, binarise prompted slices' masks before the memory encoder; and
# ``fill_hole_area=8``, a setting of its SAM2VideoPredictor (kept by VideoPropagator). "none":
# the values the configs leave them at, as SAM2Base trains (SAM2Train uses none of them).
POSTPROCESS = ("meta", "none")
_POSTPROCESS_SETTINGS = {
    "meta": {"sam_mask_decoder.dynamic_multimask_via_stability": True,
             "sam_mask_decoder.dynamic_multimask_stability_delta": 0.05,
             "sam_mask_decoder.dynamic_multimask_stability_thresh": 0.98,
             "binarize_mask_from_pts_for_mem_enc": True},
    "none": {"sam_mask_decoder.dynamic_multimask_via_stability": False,
             "sam_mask_decoder.dynamic_multimask_stability_delta": 0.05,
             "sam_mask_decoder.dynamic_multimask_stability_thresh": 0.98,
             "binarize_mask_from_pts_for_mem_enc": False},
}
META_FILL_HOLE_AREA = 8


def resolve_config(name: str, *, flag: str = "-sam_config") -> str:
    """Canonical config name for ``name`` (``.yaml`` suffix and Hydra paths accepted)."""
    base = Path(str(name)).name.removesuffix(".yaml")
    return look_up(base, CONFIGS, flag)


def config_for_variant(variant: str) -> str:
    """Task variants ``hiera_t`` -> ``sam2_hiera_t``; ``sam2.1_hiera_t`` is its own config."""
    return resolve_config(variant if variant.startswith("sam2") else f"sam2_{variant}", flag="variant")


def variant_of(config: str) -> str:
    """``sam2_hiera_t`` -> ``hiera_t``, ``sam2.1_hiera_t`` stays (metrics.json ``variant``)."""
    config = resolve_config(config)
    return config.removeprefix("sam2_")


def default_checkpoint(config: str) -> Path:
    """Meta's checkpoint for ``config``, found through the one search order (see checkpoints.py)."""
    return find_checkpoint(CHECKPOINT_FILES[resolve_config(config)])


def _compose(config: str, image_size: int) -> Any:
    """The resolved Hydra config with the image size threaded through every size-bound part."""
    import sam2  # noqa: F401  (initialises Hydra's config module)
    from hydra import compose
    from omegaconf import OmegaConf

    feat = image_size // 16  # memory attention works on the stride-16 features
    overrides = [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{feat},{feat}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{feat},{feat}]",
    ]
    cfg = compose(config_name=CONFIGS[config], overrides=overrides)
    OmegaConf.resolve(cfg)
    return cfg


def _check_image_size(image_size: int) -> None:
    # Hiera tiles an 8x8 window position embedding over the stride-4 map and the
    # backbone reaches stride 32, so the side must be a multiple of 32.
    if not isinstance(image_size, int) or image_size < 64 or image_size % 32:
        raise InputError(f"-image_size {image_size!r}: must be a multiple of 32 and at least 64")


def build_sam2_model(config: str, checkpoint: str | os.PathLike | None, *, image_size: int = 1024,
                     device: str | torch.device = "cpu", allow_random: bool = False,
                     low_rank_values: bool = True) -> torch.nn.Module:
    """SAM2Base for ``config`` at ``image_size`` with weights from ``checkpoint``.

    Args:
        config: ``sam2_hiera_t|s|b+|l`` or ``sam2.1_hiera_t|s|b+|l``.
        checkpoint: Meta's ``.pt`` or one of our training checkpoints (weights under ``model``);
            ``None``/``"none"`` means random weights, allowed only with ``allow_random``.
        image_size: input side; Meta's weights do not depend on it.
        low_rank_values: attend to the memories' 64-dim values and project after (the same
            result with fewer FLOPs; :mod:`~medsam2_hpc.models.memory_attention`). False keeps
            Meta's cross-attention as it is.

    Raises:
        InputError: unknown config, bad size, missing/unreadable/mismatched checkpoint.
    """
    config = resolve_config(config)
    _check_image_size(image_size)
    random_init = checkpoint is None or str(checkpoint) in _NO_CHECKPOINT
    if random_init and not allow_random:
        raise InputError(f"-sam_ckpt: no checkpoint given for {config}; download "
                         f"{CHECKPOINT_FILES[config]} (checkpoints/download_ckpts.sh) or pass "
                         "-sam_ckpt none to train from random weights")
    if not random_init and not Path(checkpoint).is_file():
        raise InputError(f"-sam_ckpt {checkpoint}: no such file (expected Meta's "
                         f"{CHECKPOINT_FILES[config]}; see checkpoints/download_ckpts.sh)")
    from hydra.utils import instantiate

    model = instantiate(_compose(config, image_size).model, _recursive_=True)
    if random_init:
        warnings.warn(f"{config}: no checkpoint, using RANDOM weights (results mean nothing "
                      "beyond smoke tests)", UserWarning, stacklevel=2)
    else:
        load_sam2_weights(model, checkpoint, config)
    if low_rank_values:
        from .memory_attention import use_low_rank_values

        use_low_rank_values(model)
    return model.to(device)


def _state_dict_of(ckpt: dict[str, Any], path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"{what} {path}: no SAM2 weights found (expected a state dict under 'model')")
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def describe_state(state: dict[str, torch.Tensor]) -> tuple[int, int, str]:
    """(trunk blocks, trunk embed dim, family 'sam2'|'sam2.1') of a SAM2 state dict."""
    blocks = {int(m.group(1)) for k in state
              if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))}
    patch = state.get("image_encoder.trunk.patch_embed.proj.weight")
    dim = int(patch.shape[0]) if patch is not None else -1
    family = "sam2.1" if any(k in state for k in _SAM21_KEYS) else "sam2"
    return (max(blocks) + 1 if blocks else 0), dim, family


def _mismatch(model_state: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
              config: str, path: str | os.PathLike, what: str = "-sam_ckpt") -> str | None:
    """One line saying how ``state`` differs from the model built for ``config``, or None."""
    want_blocks, want_dim, want_family = describe_state(model_state)
    blocks, dim, family = describe_state(state)
    size = _TRUNK_SHAPES.get((blocks, dim))
    fits = f"{family}_hiera_{size}" if size else None
    head = f"{what} {path} does not fit -sam_config {config}"
    if (blocks, dim) != (want_blocks, want_dim):
        hint = f": pass -sam_config {fits}" if fits else ""
        return (f"{head}: checkpoint has {blocks} blocks of width {dim}, {config} has "
                f"{want_blocks} of width {want_dim}{hint}")
    if family != want_family:
        return f"{head}: checkpoint is a {family} model, {config} is {want_family}: pass -sam_config {fits}"
    missing = sorted(set(model_state) - set(state))
    unexpected = sorted(set(state) - set(model_state))
    shapes = [k for k in model_state if k in state and model_state[k].shape != state[k].shape]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) (first {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatch(es) (first {k}: checkpoint "
                     f"{tuple(state[k].shape)}, model {tuple(model_state[k].shape)})")
    return f"{head}: {'; '.join(parts)}"


def load_sam2_weights(model: torch.nn.Module, checkpoint: str | os.PathLike, config: str,
                      what: str = "-sam_ckpt") -> None:
    """Strictly load Meta's or our checkpoint into ``model``; mismatches are one InputError line
    naming ``what`` (the flag or key the path came from)."""
    state = _state_dict_of(load_checkpoint(checkpoint, what=what), checkpoint, what)
    problem = _mismatch(model.state_dict(), state, config, checkpoint, what)
    if problem:
        raise InputError(problem)
    model.load_state_dict(state, strict=True)


def _parts(model: torch.nn.Module, parts: str) -> list[torch.nn.Module | torch.nn.Parameter]:
    decoder = [model.sam_prompt_encoder, model.sam_mask_decoder]
    if parts == "decoder":
        return decoder
    if parts == "decoder+memory":
        return [*decoder, model.memory_attention, model.memory_encoder]
    if parts == "all-but-encoder":
        return [m for name, m in model.named_children() if name != "image_encoder"] + [
            p for name, p in model.named_parameters(recurse=False)]
    return [model]


def set_trainable(model: torch.nn.Module, parts: TrainableParts | str = "all-but-encoder") -> int:
    """Freeze everything, then unfreeze ``parts``; returns the number of trainable parameters.

    ``decoder``: prompt encoder + mask decoder; ``decoder+memory``: plus memory attention and
    memory encoder; ``all-but-encoder``: everything except the Hiera image encoder (the default:
    it keeps most of the memory and compute of fine-tuning off the encoder); ``all``.
    """
    parts = look_up(parts, TRAINABLE_PARTS, "trainable")
    for p in model.parameters():
        p.requires_grad_(False)
    for part in _parts(model, parts):
        params = [part] if isinstance(part, torch.nn.Parameter) else part.parameters()
        for p in params:
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_postprocess(model: torch.nn.Module, mode: str) -> None:
    """Switch ``model`` to Meta's video-predictor settings (``meta``) or back to the plain ones.

    They act only in eval mode (SAM2's own ``not self.training`` checks), so training is the
    same either way. Hole filling is the propagator's part (``VideoPropagator(postprocess=...)``).
    """
    for name, value in _POSTPROCESS_SETTINGS[look_up(mode, POSTPROCESS, "-postprocess")].items():
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, attr, value)
