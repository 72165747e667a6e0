"""The 13 BTCV organ labels, in a module of their own.

``data.btcv`` imports torch; the collector only needs these names to order its per-organ
columns, and importing torch would cost it seconds. ``data.btcv.ORGANS`` re-exports this table.
"""

from __future__ import annotations

__all__ = ["ORGANS"]

ORGANS: dict[int, str] = {
    1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 5: "esophagus", 6: "liver",
    7: "stomach", 8: "aorta", 9: "inferior vena cava", 10: "portal and splenic veins", 11: "pancreas",
    12: "right adrenal gland", 13: "left adrenal gland",
}
