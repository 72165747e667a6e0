"""medsam2-hpc: SAM2 fine-tuning for medical segmentation on HPC clusters."""
__version__ = "0.1.0"
