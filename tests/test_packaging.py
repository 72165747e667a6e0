"""The three install descriptions (setup.cfg, environment.yml, Makefile) agree."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _install_requires() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]


def test_environment_yml_pip_list_equals_setup_cfg():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert [p for p in pip if not p.startswith("-e")] == _install_requires()
    assert "-e .[dev]" in pip


def test_makefile_pins_the_sam2_that_setup_cfg_names():
    makefile = (ROOT / "Makefile").read_text()
    sam2 = next(r for r in _install_requires() if r.startswith("sam2"))
    assert sam2 in makefile and "SAM2_BUILD_CUDA=0" in makefile


def test_console_script_is_installed_and_answers():
    exe = Path(sys.executable).with_name("medsam2-hpc")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("medsam2-hpc ")
