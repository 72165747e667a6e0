#!/usr/bin/env python
"""Predict a BTCV split with SAM2 over whole volumes (see medsam2_hpc/inference/cli.py for the flags).

    python inference_3d.py -checkpoint logs/BTCV_MedSAM2_*/Model/best_dice_epoch.pth
        -sam_config sam2_hiera_s -data_path ./data/btcv -dataset btcv -prompt bbox
        -output_dir ./output_3d [-save_vis -split test -prompt_file prompts.json]
"""

import sys

from medsam2_hpc.inference.cli import main

if __name__ == "__main__":
    sys.exit(main())
