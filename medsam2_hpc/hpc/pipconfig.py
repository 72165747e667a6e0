"""The host's package configuration, carried into an image build (``container build --pip-config host``).

Sites behind a TLS-intercepting proxy, or with an internal package mirror, have pip working on
the login node because of a CA bundle and index settings that a container build does not see:
``%post`` runs without the host environment and without the host's pip config files. This module
reads what the host's pip would use (``pip config list``: its config files, then ``PIP_*``
variables, the later winning), keeps the settings that make sense inside the build (index URLs,
find-links URLs, trusted hosts) and the CA bundle, and writes them as files the build copies in
and deletes at the end of ``%post``. Local paths (``/opt/wheels``, ``file://``) are not reachable
inside the build and are reported as skipped. Nothing printed shows a password or token:
credentials in URLs are masked.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..errors import InputError

__all__ = ["URL_KEYS", "PipConfig", "read_host", "from_values", "parse_config_list", "redact"]

# pip settings that name where packages come from; each may hold several whitespace-separated values.
URL_KEYS = ("index-url", "extra-index-url", "find-links", "trusted-host")
_SECTIONS = ("global", "install", ":env:")
_LINE = re.compile(r"^(?P<section>[^.]+)\.(?P<key>[\w-]+)='(?P<value>.*)'$")


def redact(url: str) -> str:
    """``url`` with any user name and password replaced by ``***`` (safe to print)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


@dataclass(frozen=True)
class PipConfig:
    """What travels into the build: a CA bundle and pip's package-source settings."""

    ca_bundle: Path | None
    settings: dict[str, tuple[str, ...]] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()  # "key=value (why)", already redacted

    def pip_conf(self, cert_path: str | None) -> str:
        """pip.conf text for inside the build; ``cert_path`` is where the CA bundle lands there."""
        lines = ["[global]"]
        if cert_path:
            lines.append(f"cert = {cert_path}")
        lines += [f"{key} = {' '.join(values)}" for key, values in self.settings.items()]
        return "\n".join(lines) + "\n"

    @property
    def has_credentials(self) -> bool:
        """Does a URL carry a user name or password (so the written pip.conf must stay private)?"""
        return any("@" in urlsplit(v).netloc for vals in self.settings.values() for v in vals)

    def describe(self) -> str:
        """One line for the build log, without secrets."""
        parts = [f"CA bundle {self.ca_bundle}" if self.ca_bundle else "no CA bundle"]
        parts += [f"{k} {' '.join(redact(v) for v in vals)}" for k, vals in self.settings.items()]
        if self.skipped:
            parts.append("skipped " + ", ".join(self.skipped))
        return "host pip config: " + "; ".join(parts)


def parse_config_list(text: str) -> dict[str, str]:
    """``pip config list`` output -> {key: value}; later lines (env over files) win."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match and match["section"] in _SECTIONS:
            found[match["key"]] = match["value"]
    return found


def _reachable(key: str, value: str) -> bool:
    """Does ``value`` mean the same inside the build? URLs yes; local paths and file:// no."""
    if key == "trusted-host":
        return True
    return urlsplit(value).scheme in ("http", "https")


def _ca_bundle(cert: str | None) -> Path | None:
    """pip's ``cert``, else the bundle the host's Python (requests, curl) verifies with."""
    if cert and not Path(cert).is_file():
        raise InputError(f"--pip-config host: pip's cert {cert} is not a file")
    candidates = [cert, os.environ.get("REQUESTS_CA_BUNDLE"), os.environ.get("SSL_CERT_FILE"),
                  ssl.get_default_verify_paths().cafile]
    return next((Path(p).resolve() for p in candidates if p and Path(p).is_file()), None)


def from_values(values: dict[str, str]) -> PipConfig:
    settings: dict[str, tuple[str, ...]] = {}
    skipped: list[str] = []
    for key in URL_KEYS:
        kept = []
        for value in values.get(key, "").split():
            if _reachable(key, value):
                kept.append(value)
            else:
                skipped.append(f"{key}={redact(value)} (a local path, not visible inside the build)")
        if kept:
            settings[key] = tuple(kept)
    return PipConfig(_ca_bundle(values.get("cert")), settings, tuple(skipped))


def read_host(python: str = sys.executable) -> PipConfig:
    """The host pip's effective configuration (files and ``PIP_*`` variables)."""
    proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InputError(f"--pip-config host: `{python} -m pip config list` failed: "
                         f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return from_values(parse_config_list(proc.stdout))
