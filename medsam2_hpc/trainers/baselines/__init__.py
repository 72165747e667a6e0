"""The baselines SAM2 is compared with: a ResNet encoder-decoder and YOLO11 segmentation."""

from medsam2_hpc.registry import ModelKind, register_model

register_model(ModelKind(
    name="resnet", trainer="medsam2_hpc.trainers.baselines.resnet",
    variants=("resnet18", "resnet34", "resnet50", "resnet101", "deeplabv3_resnet50"),
    default_variant="resnet50",
    datasets=("btcv", "refuge"), multi_gpu=True, baseline=True, label="ResNet"))
register_model(ModelKind(
    name="yolo", trainer="medsam2_hpc.trainers.baselines.yolo",
    variants=tuple(f"yolo11{s}-seg" for s in "nsmlx"), default_variant="yolo11l-seg",
    datasets=("btcv", "refuge"), baseline=True, label="YOLO"))
