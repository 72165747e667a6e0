"""Published Dice numbers to put beside ours (shared/reference/FACTS.md), each with its source.

They are *other people's* numbers on other splits and preprocessing: the collector prints them
only with ``--with-published``, as rows labelled ``published: ...``, never mixed into our means,
and only for datasets the study has runs on. Each number goes only into a column of the same
metric: the Medical SAM 2 paper's table is per-slice Dice (its evaluation averages 2D Dice over
slices), so it sits beside ``dice_mean_per_slice``, never in a volumetric column or heat map;
nnU-Net's own cross-validation is volumetric Dice per case; the REFUGE figure is optic cup only,
so it appears only in the REFUGE table's cup column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PER_SLICE", "VOLUMETRIC", "Published", "HEADLINE", "BTCV_ORGANS_MEDICAL_SAM2", "REFUGE_CUP"]

MEDSAM2_PAPER = "Medical SAM 2 paper"
PER_SLICE = "dice_per_slice"  # the metric names are the headline's columns they belong in
VOLUMETRIC = "dice_mean"


@dataclass(frozen=True)
class Published:
    """One published result: the method, the dataset, its mean Dice and where it comes from."""

    method: str
    dataset: str
    dice: float
    source: str
    metric: str  # PER_SLICE or VOLUMETRIC (for 2D data: Dice per image)
    note: str = ""
    per_class: dict[int, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"published: {self.method} ({self.source}{'; ' + self.note if self.note else ''})"


# Medical SAM 2 per organ, by BTCV label id; the paper gives one number for both adrenal glands.
BTCV_ORGANS_MEDICAL_SAM2 = Published(
    "Medical SAM 2", "btcv", 0.890, MEDSAM2_PAPER, PER_SLICE, "bbox; one number for both adrenals",
    per_class={1: 0.922, 2: 0.931, 3: 0.919, 4: 0.932, 5: 0.918, 6: 0.865, 7: 0.871, 8: 0.896,
               9: 0.834, 10: 0.847, 11: 0.840, 12: 0.911, 13: 0.911},
)

# Optic cup only (not the cup/disc mean of the headline): shown in the REFUGE table's cup column alone.
REFUGE_CUP = Published("REFUGE challenge best", "refuge", 0.88, "REFUGE challenge", VOLUMETRIC,
                       "optic cup, about", per_class={0: 0.88})

HEADLINE: tuple[Published, ...] = (
    Published("Medical SAM 2", "btcv", 0.890, MEDSAM2_PAPER, PER_SLICE, "bbox prompts"),
    Published("SAM 2", "btcv", 0.860, MEDSAM2_PAPER, PER_SLICE),
    Published("Swin-UNETR", "btcv", 0.869, MEDSAM2_PAPER, PER_SLICE),
    Published("UNETR", "btcv", 0.856, MEDSAM2_PAPER, PER_SLICE),
    Published("TransUNet", "btcv", 0.838, MEDSAM2_PAPER, PER_SLICE),
    Published("MedSAM", "btcv", 0.803, MEDSAM2_PAPER, PER_SLICE),
    Published("nnU-Net", "btcv", 0.802, MEDSAM2_PAPER, PER_SLICE),
    Published("nnU-Net", "btcv", 0.831, "nnU-Net, own 5-fold CV", VOLUMETRIC),
)
