"""SAM2 fine-tuning: 2D with click/box prompts (REFUGE) and 3D by memory propagation (BTCV)."""

from medsam2_hpc.registry import ModelKind, register_model

_SIZES = ("hiera_t", "hiera_s", "hiera_b+", "hiera_l")
VARIANTS = (*_SIZES, *(f"sam2.1_{s}" for s in _SIZES))

register_model(ModelKind(
    name="sam2-2d", trainer="medsam2_hpc.trainers.sam2.train_2d", variants=VARIANTS,
    default_variant="hiera_s",
    datasets=("refuge",), prompts=("click", "bbox"), multi_gpu=True))
register_model(ModelKind(
    name="sam2-3d", trainer="medsam2_hpc.trainers.sam2.train_3d", variants=VARIANTS,
    default_variant="hiera_s",
    datasets=("btcv",), prompts=("bbox", "click", "mask"), multi_gpu=True))
