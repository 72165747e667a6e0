"""Subcommands of medsam2-hpc; each module defines register(subparsers)."""
