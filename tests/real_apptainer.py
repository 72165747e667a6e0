"""The real Apptainer 1.4.5 from Debian's archive, hosted in its own root because Debian 12 has none.

Debian 12 ships no Apptainer, and Debian unstable's package needs a newer libc than the host's,
so the tests host it in a Debian-unstable root made with debootstrap (once per machine, cached
outside the checkout under :data:`CACHE`, rebuilt when :func:`inputs` change). An ``apptainer``
command on PATH enters that root (``unshare -m`` + ``pivot_root``: Apptainer refuses a plain
chroot), binds the host paths the call names at the same paths, and runs the real binary as the
unprivileged user :data:`USER` with subordinate ids (root here lacks CAP_SYS_RESOURCE, which
Apptainer wants when run as root; user namespaces are also how many clusters run it). Files the
container writes on bound paths belong to that user, so tests hand it their directories
(:meth:`RealApptainer.share`).

Which host paths are bound into the hosting root: the working directory, every absolute path
argument that exists (outside the system directories), the sources of ``--bind``/``-B`` and
``--home``, for ``build`` the parent of a new output, and ``$MEDSAM2_APPTAINER_BINDS``
(colon-separated). ``/dev/fuse`` is root-only on these machines: the root gets its own node
of the same device, world-usable, so Apptainer mounts SIF images with squashfuse.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medsam2_hpc.hpc import containers
from medsam2_hpc.hpc.containers import git_revision
from medsam2_hpc.hpc.image import record_path

CACHE = Path(os.environ.get("MEDSAM2_TEST_CACHE", "/var/cache/medsam2-hpc-tests"))
USER = "medsam2-apptainer"
DEFAULT_UID = 2190
SUBIDS = (200000, 65536)
PACKAGES = ("apptainer", "squashfs-tools", "squashfuse", "fuse3", "debootstrap", "uidmap", "ca-certificates")
SUITE = "sid"
HOST_TOOLS = ("debootstrap", "unshare", "setpriv", "mknod")

ENTER = r"""#!/bin/bash
# Runs inside `unshare -m`: make ROOT the root of this mount namespace, bind the host paths given
# at the same paths, and run apptainer there as the unprivileged user. Args: N path... -- argv...
set -euo pipefail
root="$MEDSAM2_APPTAINER_ROOT"
mount --make-rprivate /
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
if [ -e /dev/fuse ]; then mount --bind "$MEDSAM2_APPTAINER_FUSE" "$root/dev/fuse"; fi
while [ "$1" != -- ]; do
    if [ -d "$1" ]; then mkdir -p "$root$1"; else mkdir -p "$(dirname "$root$1")"; touch "$root$1"; fi
    mount --rbind "$1" "$root$1"
    shift
done
shift
cd "$root"
pivot_root . .
umount -l .
cd "$MEDSAM2_APPTAINER_PWD" 2>/dev/null || cd /
export HOME="/home/$MEDSAM2_APPTAINER_USER" USER="$MEDSAM2_APPTAINER_USER" LOGNAME="$MEDSAM2_APPTAINER_USER"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export APPTAINER_TMPDIR="${APPTAINER_TMPDIR:-/var/tmp}"
unset TMPDIR MEDSAM2_APPTAINER_ROOT MEDSAM2_APPTAINER_FUSE MEDSAM2_APPTAINER_PWD MEDSAM2_APPTAINER_USER
exec setpriv --reuid "$USER" --regid "$USER" --init-groups apptainer "$@"
"""

WRAPPER = r"""#!/bin/bash
# `apptainer`: the real Apptainer 1.4.5 from Debian's archive, hosted in @HOST@ (see tests/real_apptainer.py).
set -euo pipefail
binds=()
add() {  # a host path to bind at the same path; skip system directories and what is bound already
    local p="$1" q
    [ -n "$p" ] && [ "$p" != / ] && [ -e "$p" ] || return 0
    p="$(realpath -s "$p")"
    case "$p/" in /proc/*|/sys/*|/dev/*|/etc/*|/usr/*|/bin/*|/sbin/*|/lib*|/boot/*|/run/*) return 0;; esac
    for q in "${binds[@]}"; do case "$p/" in "$q"/*) return 0;; esac; done
    binds+=("$p")
}
paths=("$PWD")
IFS=: read -r -a extra <<< "${MEDSAM2_APPTAINER_BINDS:-}"
paths+=("${extra[@]}")
prev="" sub=""
for a in "$@"; do
    case "$prev" in
        --bind|-B) IFS=, read -r -a items <<< "$a"; for i in "${items[@]}"; do paths+=("${i%%:*}"); done;;
        --home) paths+=("${a%%:*}");;
    esac
    case "$a" in
        /*) if [ -e "$a" ]; then paths+=("$a"); elif [ "$sub" = build ]; then paths+=("$(dirname "$a")"); fi;;
        build|exec|run|inspect|test|shell) [ -z "$sub" ] && sub="$a";;
    esac
    prev="$a"
done
# parents first, so that a path inside a bound one is not bound twice
mapfile -t sorted < <(printf '%s\n' "${paths[@]}" | awk '{ print length, $0 }' | sort -n | cut -d' ' -f2-)
for p in "${sorted[@]}"; do add "$p"; done
export MEDSAM2_APPTAINER_ROOT=@ROOT@ MEDSAM2_APPTAINER_FUSE=@FUSE@ MEDSAM2_APPTAINER_USER=@USER@
export MEDSAM2_APPTAINER_PWD="$PWD"
exec unshare -m @ENTER@ "${binds[@]}" -- "$@"
"""


def host_mirror() -> str:
    """The Debian archive apt already uses on this machine (a proxy or snapshot may sit behind it)."""
    texts = [p.read_text(errors="replace") for p in [Path("/etc/apt/sources.list"),
                                                     *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
             if p.is_file()]
    for text in texts:
        for url in re.findall(r"(?:^URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+/debian)/?\s", text, re.M):
            return url
    return "http://deb.debian.org/debian"


def _ids() -> tuple[int, int]:
    """The host user's ids when .ci/run made it (files on the host then show its name), else a default."""
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        return DEFAULT_UID, DEFAULT_UID
    return entry.pw_uid, entry.pw_gid


def inputs() -> dict:
    """Everything the hosting root is made from: change any and it is rebuilt."""
    return {"suite": SUITE, "mirror": host_mirror(), "packages": PACKAGES, "user": USER, "ids": _ids(),
            "subids": SUBIDS, "enter": ENTER, "wrapper": WRAPPER, "layout": 1}


@dataclass(frozen=True)
class RealApptainer:
    """The hosted Apptainer: its ``bin`` directory (holding ``apptainer``) and the user it runs as."""

    home: Path
    uid: int
    gid: int

    @property
    def bindir(self) -> Path:
        return self.home / "bin"

    @property
    def root(self) -> Path:
        return self.home / "root"

    def share(self, *paths: Path) -> None:
        """Hand directories (recursively) to the user Apptainer runs as, so the container can write."""
        for path in paths:
            for dirpath, dirnames, filenames in os.walk(path):
                for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                    os.lchown(name, self.uid, self.gid)

    def version(self) -> str:
        out = subprocess.run([str(self.bindir / "apptainer"), "--version"], capture_output=True, text=True,
                             timeout=60)
        return out.stdout.strip() or out.stderr.strip()


def missing_host_tools() -> list[str]:
    return [t for t in HOST_TOOLS if shutil.which(t) is None]


def _run(argv: list[str], log: Path, **kw) -> None:
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(argv)}\n".encode())
        fh.flush()
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, **kw)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}); {log}:\n" + "\n".join(tail))


def _build(home: Path, spec: dict) -> None:
    """debootstrap the unstable root, install Apptainer, add the user; then the two scripts."""
    log = home / "build.log"
    root = home / "root"
    _run(["debootstrap", "--variant=minbase", SUITE, str(root), spec["mirror"]], log, timeout=1800)
    apt = ["chroot", str(root), "apt-get", "-o", "Acquire::Check-Valid-Until=false", "-q"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run([*apt, "update"], log, env=env, timeout=600)
    _run([*apt, "install", "-y", "--no-install-recommends", *PACKAGES], log, env=env, timeout=1800)
    for name in ("hosts", "resolv.conf"):  # apptainer build reads /etc/hosts; debootstrap in it resolves
        if Path("/etc", name).is_file():
            shutil.copyfile(Path("/etc", name), root / "etc" / name)
    uid, gid = spec["ids"]
    _run(["chroot", str(root), "groupadd", "-g", str(gid), USER], log)
    _run(["chroot", str(root), "useradd", "-m", "-u", str(uid), "-g", str(gid), USER], log)
    first, count = SUBIDS
    for name in ("subuid", "subgid"):
        (root / "etc" / name).write_text(f"{USER}:{first}:{count}\n")
    os.mknod(home / "fuse", 0o20666, os.makedev(10, 229))
    os.chmod(home / "fuse", 0o666)  # the umask may have cut the mode
    enter = home / "enter.sh"
    enter.write_text(ENTER)
    enter.chmod(0o755)
    (home / "bin").mkdir()
    wrapper = WRAPPER
    for key, value in (("@HOST@", str(home)), ("@ROOT@", str(root)), ("@FUSE@", str(home / "fuse")),
                       ("@USER@", USER), ("@ENTER@", str(enter))):
        wrapper = wrapper.replace(key, value)
    (home / "bin" / "apptainer").write_text(wrapper)
    (home / "bin" / "apptainer").chmod(0o755)
    (home / "inputs.json").write_text(json.dumps(spec, indent=1))


def ensure(cache: Path = CACHE) -> RealApptainer:
    """The hosted Apptainer for the current inputs, building it if this machine has none yet.

    Concurrent sessions wait on a lock; a half-built root is never used (built aside, then renamed).
    """
    spec = inputs()
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    home = cache / f"apptainer-host-{digest}"
    with open(cache / ".apptainer-host.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / "bin" / "apptainer").is_file():
            work = cache / f".building-{digest}-{os.getpid()}-{int(time.time())}"
            work.mkdir()
            try:
                _build(work, spec)
                _rewrite_paths(work, home)
                work.rename(home)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
    uid, gid = spec["ids"]
    return RealApptainer(home=home, uid=uid, gid=gid)


def _rewrite_paths(work: Path, home: Path) -> None:
    """The scripts name their final directory, not the one they were built in."""
    for script in (work / "bin" / "apptainer",):
        script.write_text(script.read_text().replace(str(work), str(home)))


# ---------------------------------------------------------------------------------------------
# Our image, built with it

REPO = Path(__file__).resolve().parents[1]
DEFINITION = REPO / "containers" / "medsam2.def"
# What %files copies (containers/medsam2.def), plus the definition itself.
IMAGE_SOURCES = ("containers/medsam2.def", "setup.cfg", "pyproject.toml", "README.md", "medsam2_hpc")
# zstd level 3: squashes the GBs of CUDA wheels several times faster than the default gzip.
# The image is built in two layers, as a site rebuilding after each code change would: the
# dependencies once (`--deps-only`, half an hour: GBs of CUDA wheels), our package on top (`--base`).
DEPS_FLAGS = ("--deps-only", "--bootstrap", "debootstrap", "--fakeroot", "--pip-config", "host",
              "--compression", "zstd")
PACKAGE_FLAGS = ("--fakeroot", "--pip-config", "host", "--compression", "zstd")


def deps_digest() -> str:
    """Hash of the dependency layer's inputs: its flags, the mirror and the definition's deps part
    (containers.deps_key); a change to our package alone keeps it."""
    key = containers.deps_key(DEFINITION.read_text(encoding="utf-8"))
    return hashlib.sha256(json.dumps([DEPS_FLAGS, host_mirror(), key]).encode()).hexdigest()[:16]


def image_digest(repo: Path = REPO) -> str:
    """Hash of the image's inputs: the deps layer, the package layer's flags and every file it copies.

    Not the revision: a commit that changes none of them reuses the image, whose revision
    label (and build record) then names the earlier commit it was built from.
    """
    h = hashlib.sha256(json.dumps([PACKAGE_FLAGS, deps_digest()]).encode())
    for source in IMAGE_SOURCES:
        root = repo / source
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts)
        for path in files:
            h.update(path.relative_to(repo).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def image_path(host: RealApptainer, cache: Path = CACHE) -> Path:
    return cache / "images" / f"medsam2-{image_digest()}.sif"


def deps_path(cache: Path = CACHE) -> Path:
    return cache / "images" / f"medsam2-deps-{deps_digest()}.sif"


def image_record(image: Path) -> dict:
    """What :func:`build_image` wrote beside the image: build times, size, revision, logs."""
    return json.loads(image.with_suffix(".json").read_text())


def _container_build(host: RealApptainer, flags: Sequence[str], out: Path, log: Path) -> dict:
    """`medsam2-hpc container build <flags>` into ``out`` (built aside, then renamed); its record."""
    partial = out.with_name(f".{out.stem}.{os.getpid()}.sif")
    argv = [sys.executable, "-m", "medsam2_hpc.cli", "container", "build", *flags, "--out", str(partial),
            "--force"]
    revision = git_revision(REPO)
    start = time.monotonic()
    with open(log, "wb") as fh:
        # the base image a package layer names in its definition must be visible in the hosting root
        env = {**os.environ, "PATH": f"{host.bindir}{os.pathsep}{os.environ['PATH']}",
               "MEDSAM2_APPTAINER_BINDS": str(out.parent)}
        proc = subprocess.run(argv, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"container build failed ({proc.returncode}) after {seconds:.0f} s; "
                           f"{log}:\n{tail}")
    record = {"build_seconds": round(seconds, 1), "size_bytes": partial.stat().st_size,
              "flags": list(flags), "revision": revision, "log": str(log)}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    record_path(partial).rename(record_path(out))  # the build's own record: digest, checkpoints
    partial.rename(out)
    return record


def build_image(host: RealApptainer, image: Path, log: Path) -> dict:
    """Our image into ``image``: the deps layer (cached by :func:`deps_digest`, built when missing),
    then `container build --base` with :data:`PACKAGE_FLAGS`. Returns build times and size.

    Under a lock; images of other inputs are removed (GBs each).
    """
    image.parent.mkdir(parents=True, exist_ok=True)
    os.chown(image.parent, host.uid, host.gid)  # apptainer, as its user, writes the .sif there
    with open(image.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.exists():
            return image_record(image)
        deps = deps_path(image.parent.parent)
        for old in image.parent.glob("medsam2-*"):  # images of other inputs, their records and logs
            if old.name.split(".", 1)[0] not in (image.stem, deps.stem):
                old.unlink()
        if not deps.exists():
            # the archive apt uses here (deps_digest has it): the build's debootstrap can reach it
            _container_build(host, (*DEPS_FLAGS, "--mirror", host_mirror()), deps, deps.with_suffix(".log"))
        record = _container_build(host, (*PACKAGE_FLAGS, "--base", str(deps)), image, log)
        record["deps"] = {"image": str(deps), **image_record(deps)}
        image.with_suffix(".json").write_text(json.dumps(record, indent=1))
        return record


def main() -> int:
    """``python -m tests.real_apptainer``: the image for this checkout, built if missing (the
    session's background build, tests/conftest.py). Exit 1 with the reason when it cannot be."""
    try:
        host = ensure()
        image = image_path(host)
        if not image.exists():
            build_image(host, image, image.with_suffix(".log"))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
