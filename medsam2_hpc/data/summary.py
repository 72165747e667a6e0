"""What ``medsam2-hpc data check`` prints for each dataset: every file of every split decoded.

Each function is a dataset's ``summary`` entry in the registry (``data/__init__.py``): a corrupt
or missing file raises InputError (one line, exit 2) before a multi-hour job finds it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["refuge", "btcv"]


def refuge(path: Path, window: str = "ct") -> dict:
    """Cases and mean mask area per class of the train and test splits (``window`` is BTCV's)."""
    from medsam2_hpc.data.refuge import RefugeDataset

    summary: dict = {"dataset": "refuge"}
    for split in ("train", "test"):
        ds = RefugeDataset(path, split, image_size=256, out_size=256)
        fractions = np.array([ds[i]["mask"].mean(dim=(1, 2)).numpy() for i in range(len(ds))])
        summary.update(layout=ds.layout, classes=list(ds.classes))
        means = [round(float(m), 4) for m in fractions.mean(0)]
        summary[split] = {"cases": len(ds), "mean_area_fraction": dict(zip(ds.classes, means, strict=True))}
    return summary


def btcv(path: Path, window: str = "ct") -> dict:
    """Cases, shapes, labelled slices and organs of the train and val/test splits."""
    from medsam2_hpc.data.btcv import ORGANS, BTCVVolumes, labelled_slices
    from medsam2_hpc.data.nifti import CT_WINDOW

    summary: dict = {"dataset": "btcv"}
    for split in ("train", "val"):
        volumes = BTCVVolumes(path, split, window=CT_WINDOW if window == "ct" else None, cache_size=1)
        organs: set[int] = set()
        shapes, slices = [], 0
        for volume in volumes:
            shapes.append(list(volume.image.shape))
            organs.update(int(v) for v in np.unique(volume.label) if v)
            slices += len(labelled_slices(volume))
        summary["layout"] = volumes.layout
        summary["val/test" if split == "val" else split] = {
            "cases": volumes.cases, "shapes": shapes, "labelled_slices": slices,
            "organs": [ORGANS[o] for o in sorted(organs)]}
    return summary
