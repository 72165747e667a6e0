"""The ResNet baseline network: a U-Net decoder on a torchvision ResNet encoder.

Why a U-Net and not torchvision's DeepLabV3/FCN heads alone: the targets here are small
(optic cup, adrenal glands a few pixels wide at 256 px) and DeepLabV3 predicts at 1/8 of the
input, FCN at 1/8-1/32, then upsamples bilinearly, which blurs exactly those boundaries.
Skip connections from every encoder stage give full-resolution edges, and the same design
works for resnet18/34 (BasicBlock, which torchvision cannot dilate) and resnet50/101, so
the CPU tests run the same code as the cluster. torchvision's ``deeplabv3_resnet50`` is
offered too, as the off-the-shelf reference. Nothing is downloaded: weights are random, or
ImageNet weights from a local file (a torchvision ``resnet*.pth`` state dict) for the encoder.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from medsam2_hpc.engine.checkpoint import load_checkpoint
from medsam2_hpc.errors import InputError
from medsam2_hpc.options import look_up
from medsam2_hpc.registry import model_kind

__all__ = ["VARIANTS", "build_network"]

VARIANTS = model_kind("resnet").variants  # torchvision's builders of these names (build_network)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class ResNetUNet(nn.Module):
    """Encoder stages at strides 2, 4, 8, 16, 32; a decoder that upsamples and concatenates each skip."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder.fc = nn.Identity()  # unused; keeps the torchvision state-dict keys loadable
        exp = type(encoder.layer1[0]).expansion  # 1 for BasicBlock, 4 for Bottleneck
        widths = [64, 64 * exp, 128 * exp, 256 * exp, 512 * exp]
        dec = [256, 128, 64, 32]
        self.up = nn.ModuleList()
        cin = widths[4]
        for skip, cout in zip(reversed(widths[:4]), dec, strict=True):
            self.up.append(_block(cin + skip, cout))
            cin = cout
        self.head = nn.Sequential(_block(cin, 16), nn.Conv2d(16, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.encoder
        s1 = e.relu(e.bn1(e.conv1(x)))          # /2
        s2 = e.layer1(e.maxpool(s1))            # /4
        s3 = e.layer2(s2)                       # /8
        s4 = e.layer3(s3)                       # /16
        y = e.layer4(s4)                        # /32
        for block, skip in zip(self.up, (s4, s3, s2, s1), strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], 1))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(y)


class _DeepLab(nn.Module):
    """torchvision's DeepLabV3 returning a tensor (its forward returns a dict)."""

    def __init__(self, num_classes: int) -> None:
        from torchvision.models.segmentation import deeplabv3_resnet50

        super().__init__()
        self.net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes,
                                      aux_loss=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def build_network(variant: str, num_classes: int, pretrained_weights: str | None = None) -> nn.Module:
    """Randomly initialised network; ImageNet encoder weights only from the local file given.

    Raises:
        InputError: unknown variant, or a weights file that is missing or does not fit the encoder.
    """
    import torchvision.models  # seconds to import: here, not in the trainer's check before queueing

    look_up(variant, VARIANTS, "variant")
    if variant == "deeplabv3_resnet50":
        model: nn.Module = _DeepLab(num_classes)
        encoder = model.net.backbone
    else:
        model = ResNetUNet(getattr(torchvision.models, variant)(weights=None), num_classes)
        encoder = model.encoder
    if pretrained_weights:
        _load_encoder(encoder, pretrained_weights)
    return model


def _load_encoder(encoder: nn.Module, path: str) -> None:
    state = load_checkpoint(os.fspath(path), what="hparams.pretrained_weights")
    state = state.get("state_dict", state.get("model", state))
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    wanted = {k for k in own if not k.startswith("fc.")}
    missing = sorted(wanted - set(state))
    bad = [k for k in wanted & set(state) if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or bad:
        what = f"missing {missing[0]!r}" if missing else f"shape of {bad[0]!r} differs"
        raise InputError(f"hparams.pretrained_weights {path}: not a state dict of this ResNet encoder "
                         f"({what})")
    encoder.load_state_dict({k: state[k] for k in wanted}, strict=False)
