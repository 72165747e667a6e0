"""HPC layer: jobs.yaml studies -> submitit arrays (launcher), requeue-safe task calls (requeue),
and the container image and its exec line (containers). Imported lazily by the commands."""
