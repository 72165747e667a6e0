"""BTCV data-layer throughput: slices per second, cold and cached, both layouts, peak memory.

    python benchmarks/bench_data.py [--cases 4] [--depth 64] [--size 256] [--image-size 256]
                                    [--data PATH ...] [--out FILE]

Without ``--data`` it writes synthetic BTCV in both layouts to a temp dir (same seed, so the
two layouts hold the same volumes). Figures, per layout:
- ``cold_slices_per_s``: decoding every case in a fresh BTCVVolumes (files -> (D,H,W) arrays;
  the OS page cache is not dropped, so this is decode cost, not disk cost);
- ``cached_slices_per_s``: model-ready BTCVSlices items (resize to --image-size, 3 channels)
  served from the volume cache; ``cached_clip_slices_per_s``: the same through BTCVClips;
- ``peak_traced_mb``: peak Python/numpy allocation during the cold decode (tracemalloc);
- ``cache_mb``: bytes held by the cached volumes.
``max_rss_mb`` is the whole process's peak resident memory. JSON goes to stdout and ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch

from medsam2_hpc.atomic import write_json
from medsam2_hpc.data import btcv, synthetic


def bench_layout(root: Path, image_size: int, video_length: int) -> dict:
    tracemalloc.start()
    start = time.perf_counter()
    volumes = btcv.BTCVVolumes(root, "train")
    decoded = [volumes.get(case) for case in volumes.cases]
    cold = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n_slices = sum(v.image.shape[0] for v in decoded)

    slices = btcv.BTCVSlices(volumes, image_size, labelled_only=False)
    start = time.perf_counter()
    for i in range(len(slices)):
        slices[i]
    cached = time.perf_counter() - start

    clips = btcv.BTCVClips(volumes, video_length, image_size, labelled_only=False)
    start = time.perf_counter()
    for i in range(0, len(clips), video_length):
        clips[i]
    clip_items = len(range(0, len(clips), video_length))
    clip_time = time.perf_counter() - start
    return {
        "layout": volumes.layout, "cases": len(decoded), "slices": n_slices,
        "volume_shape": list(decoded[0].image.shape),
        "cold_seconds": round(cold, 4), "cold_slices_per_s": round(n_slices / cold, 1),
        "cached_slices_per_s": round(len(slices) / cached, 1),
        "cached_clip_slices_per_s": round(clip_items * video_length / clip_time, 1),
        "peak_traced_mb": round(peak / 2**20, 1),
        "cache_mb": round(sum(v.image.nbytes + v.label.nbytes for v in decoded) / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="synthetic slice side in px")
    parser.add_argument("--image-size", type=int, default=256, help="model input side in px")
    parser.add_argument("--video-length", type=int, default=8)
    parser.add_argument("--data", type=Path, nargs="*", help="existing BTCV copies to measure instead")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        roots = args.data or [
            synthetic.make_btcv(Path(tmp) / layout, layout, n_train=args.cases, n_test=1,
                                depth=args.depth, size=args.size, seed=0)
            for layout in ("slices", "nifti")]
        results = [bench_layout(root, args.image_size, args.video_length) for root in roots]
    report = {
        "benchmark": "bench_data", "image_size": args.image_size, "video_length": args.video_length,
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "results": results,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
