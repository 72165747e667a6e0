"""`medsam2-hpc container build|check|dockerfile`: the one image every task runs in.

``build`` renders containers/medsam2.def (revision label, optional checkpoints) beside the
sources it copies and runs ``apptainer build`` (or ``singularity build``) from the repository
root, so %files paths resolve the same way as in ``docker build .``; then it writes the image's
record beside it (``<image>.json``: digest, revision, baked checkpoints; hpc/image.py).
A full build takes half an hour (GBs of CUDA wheels); ``--deps-only`` builds everything but our
package once, and ``--base <that image>`` layers the package on it after each code change.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

from medsam2_hpc.atomic import write_text
from medsam2_hpc.errors import EXIT_FAILURE, InputError
from medsam2_hpc.hpc import containers, image, pipconfig

CHECKPOINT_GLOB = "checkpoints/*.pt"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("container", help="build, check or convert the Apptainer image definition",
                       description=__doc__.splitlines()[0])
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    b = actions.add_parser("build", help="build the image with apptainer or singularity")
    b.add_argument("--runtime", choices=("apptainer", "singularity"),
                   help="container runtime (default: apptainer if on PATH, else singularity)")
    b.add_argument("--fakeroot", action="store_true", help="unprivileged build (apptainer build --fakeroot)")
    b.add_argument("--sandbox", action="store_true", help="build a writable directory instead of a .sif")
    b.add_argument("--with-checkpoints", action="store_true",
                   help=f"bake {CHECKPOINT_GLOB} into the image (run checkpoints/download_ckpts.sh first)")
    b.add_argument("--out", help="image path (default: containers/medsam2.sif, or build/medsam2-sandbox "
                                 "with --sandbox; medsam2-deps.sif / medsam2-deps-sandbox with --deps-only)")
    b.add_argument("--force", action="store_true", help="overwrite an existing image")
    b.add_argument("--bootstrap", choices=containers.BOOTSTRAPS,
                   help="docker: the pinned PyTorch image (default); debootstrap: Debian bookworm from "
                        "--mirror plus Python and CUDA-enabled torch wheels from PyPI (no Docker Hub needed)")
    layer = b.add_mutually_exclusive_group()
    layer.add_argument("--deps-only", action="store_true",
                       help="build everything but medsam2-hpc itself (Python, torch, sam2, the "
                            "requirements): a base for --base, rebuilt only when the requirements change")
    layer.add_argument("--base", metavar="IMAGE",
                       help="install medsam2-hpc on IMAGE, a --deps-only build of this definition's "
                            "requirements (minutes instead of a full build; checked by its medsam2.deps "
                            "label)")
    b.add_argument("--mirror", help=f"Debian archive for --bootstrap debootstrap "
                                    f"(default {containers.DEFAULT_MIRROR})")
    b.add_argument("--pip-config", choices=("none", "host"), default="none",
                   help="host: pip inside the build uses this machine's CA bundle and pip index/find-links "
                        "settings (for proxies and internal mirrors); credentials are never printed")
    b.add_argument("--compression", choices=tuple(containers.COMPRESSION),
                   help="squashfs compression of the .sif (apptainer's default is gzip; zstd (level 3) and "
                        "lz4 build faster, and need Apptainer >= 1.1 or SingularityCE >= 3.10 to run)")
    b.add_argument("--def", dest="definition", default=str(containers.DEF_PATH), help=argparse.SUPPRESS)
    b.set_defaults(func=build)

    c = actions.add_parser("check", help="report missing sections, unpinned base images, requirement drift")
    c.add_argument("--def", dest="definition", default=str(containers.DEF_PATH), help="definition file")
    c.set_defaults(func=check)

    d = actions.add_parser("dockerfile", help="print (or --write) the Dockerfile generated from it")
    d.add_argument("--write", action="store_true", help="write containers/Dockerfile")
    d.add_argument("--def", dest="definition", default=str(containers.DEF_PATH), help=argparse.SUPPRESS)
    d.set_defaults(func=dockerfile)


def check(args: argparse.Namespace) -> int:
    definition = Path(args.definition)
    problems = containers.check(definition, dockerfile=definition.parent / "Dockerfile")
    if problems:
        raise InputError(f"{definition}: {len(problems)} problem(s): " + "; ".join(problems))
    print(f"{definition}: ok (base {containers.parse(definition).base_image}, "
          f"{len(containers.setup_requires())} requirements equal to setup.cfg)")
    return 0


def dockerfile(args: argparse.Namespace) -> int:
    definition = Path(args.definition)
    text = containers.to_dockerfile(definition)
    if args.write:
        target = definition.parent / "Dockerfile"
        write_text(target, text)
        print(f"wrote {target}")
    else:
        sys.stdout.write(text)
    return 0


def build(args: argparse.Namespace) -> int:
    """Check everything first (runtime, definition, output, checkpoints, flags), then build."""
    definition = Path(args.definition).resolve()
    context = definition.parent.parent
    if args.mirror and args.bootstrap != "debootstrap":
        raise InputError("--mirror: only used with --bootstrap debootstrap")
    if args.base and args.bootstrap:
        raise InputError("--bootstrap: with --base the base image is the bootstrap; drop one of them")
    if args.deps_only and args.with_checkpoints:
        raise InputError("--with-checkpoints: checkpoints go into the package layer, not --deps-only")
    base = Path(args.base).resolve() if args.base else None
    if base is not None and not base.exists():
        raise InputError(f"--base: {base} does not exist; build it with --deps-only")
    runtime = containers.find_runtime(args.runtime)
    problems = containers.check(definition, dockerfile=None)
    if problems:
        raise InputError(f"{definition}: {len(problems)} problem(s): " + "; ".join(problems))
    # a deps image lacks our package: never where jobs.yaml's container.image points by default
    name = "medsam2-deps" if args.deps_only else "medsam2"
    default = f"build/{name}-sandbox" if args.sandbox else f"containers/{name}.sif"
    out = Path(args.out or context / default).resolve()
    if out.exists() and not args.force:
        raise InputError(f"--out: {out} exists; remove it or pass --force")
    checkpoints = sorted(p.relative_to(context).as_posix() for p in context.glob(CHECKPOINT_GLOB))
    if args.with_checkpoints and not checkpoints:
        raise InputError(f"--with-checkpoints: no {context / CHECKPOINT_GLOB}; "
                         "run bash checkpoints/download_ckpts.sh")
    pip = pipconfig.read_host() if args.pip_config == "host" else None
    text = definition.read_text(encoding="utf-8")
    revision = containers.git_revision(context)
    baked = checkpoints if args.with_checkpoints else []
    layer = "deps" if args.deps_only else "package" if base is not None else "full"
    render = partial(containers.render, text, revision=revision, checkpoints=baked,
                     bootstrap=args.bootstrap or "docker", mirror=args.mirror or containers.DEFAULT_MIRROR,
                     layer=layer, base=None if base is None else str(base))
    render()  # bad --mirror etc. fail here, before anything is written
    if base is not None:
        have, want = containers.base_deps_key(runtime, base), containers.deps_key(text)
        if have != want:
            raise InputError(f"--base: {base} was not built with --deps-only from this definition's "
                             f"requirements ({containers.DEPS_LABEL} {have or 'missing'}, needed {want}); "
                             "rebuild it with --deps-only")
    if pip is not None:
        print(pip.describe(), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside the sources, so relative %files paths resolve whichever way the runtime reads them.
    scratch = context / f".medsam2-build-{os.getpid()}"
    build_def = scratch.with_suffix(".def")
    try:
        pip_files = _write_pip_files(pip, scratch) if pip is not None else []
        write_text(build_def, render(pip_files=[f.relative_to(context).as_posix() for f in pip_files]))
        argv = containers.build_argv(runtime, out, build_def.name, fakeroot=args.fakeroot,
                                     sandbox=args.sandbox, force=args.force, compression=args.compression)
        print("+ " + " ".join(argv), flush=True)
        code = subprocess.run(argv, cwd=context).returncode
    finally:
        build_def.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    if code != 0:
        print(f"medsam2-hpc container build: {Path(runtime).name} build failed (exit {code})",
              file=sys.stderr)
        return EXIT_FAILURE
    print(f"built {out}")
    if out.is_file():  # not a --sandbox: its digest and baked checkpoints, for submit on the login node
        record = image.write_record(out, revision=revision, checkpoints=[Path(c).name for c in baked])
        print(f"recorded {image.record_path(out)} ({record.digest})")
    return 0


def _write_pip_files(pip: pipconfig.PipConfig, scratch: Path) -> list[Path]:
    """pip.conf and a copy of the CA bundle; owner-only when an index URL carries credentials."""
    private = pip.has_credentials
    scratch.mkdir(mode=0o700 if private else 0o755)
    files = []
    if pip.ca_bundle is not None:
        files.append(scratch / "ca.crt")
        shutil.copyfile(pip.ca_bundle, files[-1])
    cert = f"{containers.BUILD_DIR}/ca.crt" if pip.ca_bundle is not None else None
    conf = scratch / "pip.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(pip.pip_conf(cert))
    return [conf, *files]
