"""Model builders shared by the trainers (SAM2 today; the baselines build their own)."""

from .sam2 import (
    CHECKPOINT_FILES,
    CONFIGS,
    build_sam2_model,
    config_for_variant,
    default_checkpoint,
    load_sam2_weights,
    resolve_config,
    set_trainable,
    variant_of,
)

__all__ = ["CONFIGS", "CHECKPOINT_FILES", "build_sam2_model", "config_for_variant", "default_checkpoint",
           "load_sam2_weights", "resolve_config", "set_trainable", "variant_of"]
