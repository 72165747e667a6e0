"""checkpoints/download_ckpts.sh, data/download_refuge.sh, data/download_btcv.sh.

No test leaves the machine: "offline" is a closed port on 127.0.0.1, and downloads come
from file:// mirrors or a python http.server bound to 127.0.0.1 serving small fake files.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints" / "download_ckpts.sh"
OFFLINE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


def run(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MEDSAM2_CONNECT_TIMEOUT": "5", **env})


@pytest.fixture()
def mirror(tmp_path: Path) -> Path:
    """A file:// mirror of Meta's layout with small random 'checkpoints'."""
    root = tmp_path / "mirror"
    for folder, gen in (("072824", "sam2"), ("092824", "sam2.1")):
        for i, model in enumerate(("tiny", "small", "base_plus", "large")):
            path = root / folder / f"{gen}_hiera_{model}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(4000 + i))
    return root


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """python's http.server on 127.0.0.1 (a free port) serving a directory."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_checkpoints_fail_clearly_when_offline(tmp_path):
    proc = run(CKPT, "--dir", str(tmp_path / "ck"), MEDSAM2_CKPT_BASE_URL=OFFLINE)
    assert proc.returncode == 1
    assert "cannot reach http://127.0.0.1:9/072824/sam2_hiera_tiny.pt" in proc.stderr
    assert "offline" in proc.stderr
    assert list((tmp_path / "ck").iterdir()) == []


def test_checkpoints_subset_from_a_mirror(tmp_path, mirror):
    out = tmp_path / "ck"
    proc = run(CKPT, "--sam2.1", "--models", "tiny,small", "--dir", str(out),
               MEDSAM2_CKPT_BASE_URL=mirror.as_uri(), MEDSAM2_CKPT_MIN_BYTES="100")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["sam2.1_hiera_small.pt", "sam2.1_hiera_tiny.pt"]
    expected = (mirror / "092824" / "sam2.1_hiera_small.pt").read_bytes()
    assert (out / "sam2.1_hiera_small.pt").read_bytes() == expected


def test_checkpoints_resume_a_partial_download(tmp_path, mirror):
    """The .part holds different bytes than the server: only the missing tail may be fetched."""
    out = tmp_path / "ck"
    out.mkdir()
    source = (mirror / "072824" / "sam2_hiera_tiny.pt").read_bytes()
    (out / "sam2_hiera_tiny.pt.part").write_bytes(b"\0" * 1500)
    proc = run(CKPT, "--sam2", "--models", "tiny", "--dir", str(out),
               MEDSAM2_CKPT_BASE_URL=mirror.as_uri(), MEDSAM2_CKPT_MIN_BYTES="100")
    assert proc.returncode == 0, proc.stderr
    assert (out / "sam2_hiera_tiny.pt").read_bytes() == b"\0" * 1500 + source[1500:]
    assert not (out / "sam2_hiera_tiny.pt.part").exists()
    again = run(CKPT, "--sam2", "--models", "tiny", "--dir", str(out),
                MEDSAM2_CKPT_BASE_URL=mirror.as_uri(), MEDSAM2_CKPT_MIN_BYTES="100")
    assert again.returncode == 0 and "already complete" in again.stdout


def test_checkpoints_reject_a_file_below_the_known_size(tmp_path, mirror):
    out = tmp_path / "ck"
    proc = run(CKPT, "--sam2", "--models", "tiny", "--dir", str(out), MEDSAM2_CKPT_BASE_URL=mirror.as_uri())
    assert proc.returncode == 1
    assert "expected at least 120000000" in proc.stderr
    assert list(out.iterdir()) == []  # neither the file nor a .part that would pass next time


def test_checkpoints_over_http_with_size_check(tmp_path, http_root):
    root, url = http_root
    (root / "072824").mkdir()
    (root / "072824" / "sam2_hiera_small.pt").write_bytes(b"x" * 5000)
    out = tmp_path / "ck"
    proc = run(CKPT, "--sam2", "--models", "small", "--dir", str(out),
               MEDSAM2_CKPT_BASE_URL=url, MEDSAM2_CKPT_MIN_BYTES="100")
    assert proc.returncode == 0, proc.stderr
    assert (out / "sam2_hiera_small.pt").stat().st_size == 5000
    missing = run(CKPT, "--sam2", "--models", "large", "--dir", str(out), MEDSAM2_CKPT_BASE_URL=url)
    assert missing.returncode == 1 and "cannot download" in missing.stderr


def test_checkpoints_bad_option_exits_2():
    proc = run(CKPT, "--models", "huge")
    assert proc.returncode == 2 and "'huge' is not one of tiny,small,base_plus,large" in proc.stderr
    assert run(CKPT, "--bogus").returncode == 2


@pytest.mark.parametrize("script,var", [("download_refuge.sh", "MEDSAM2_REFUGE_URL"),
                                        ("download_btcv.sh", "MEDSAM2_BTCV_URL")])
def test_data_scripts_fail_clearly_when_offline(tmp_path, script, var):
    proc = run(ROOT / "data" / script, "--dir", str(tmp_path), **{var: f"{OFFLINE}/x.zip"})
    assert proc.returncode == 1 and "offline" in proc.stderr


def _zip(path: Path, members: list[str]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name in members:
            zf.writestr(name, b"fake")


def test_refuge_download_unzips_the_layout_over_http(tmp_path, http_root):
    root, url = http_root
    _zip(root / "REFUGE.zip", ["REFUGE/Training-400/g0001/g0001_cropped.jpg",
                               "REFUGE/Test-400/T0001/T0001_cropped.jpg"])
    out = tmp_path / "data"
    proc = run(ROOT / "data" / "download_refuge.sh", "--dir", str(out),
               MEDSAM2_REFUGE_URL=f"{url}/REFUGE.zip", MEDSAM2_DATA_MIN_BYTES="10")
    assert proc.returncode == 0, proc.stderr
    assert (out / "REFUGE" / "Training-400" / "g0001" / "g0001_cropped.jpg").is_file()
    assert not (out / "REFUGE.zip").exists()


def test_btcv_download_reports_an_unexpected_layout(tmp_path, http_root):
    root, url = http_root
    _zip(root / "btcv.zip", ["btcv/Training/image/img0001/0.jpg"])  # no Test/
    out = tmp_path / "data"
    proc = run(ROOT / "data" / "download_btcv.sh", "--dir", str(out),
               MEDSAM2_BTCV_URL=f"{url}/btcv.zip", MEDSAM2_DATA_MIN_BYTES="10")
    assert proc.returncode == 1 and "btcv/Test is missing after unzipping" in proc.stderr
    assert (out / "btcv.zip").is_file()  # kept, so a fixed layout needs no new download
