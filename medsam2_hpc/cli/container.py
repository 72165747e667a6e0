"""`medsam2-hpc container build|check|dockerfile`: the one image every task runs in.

``build`` renders containers/medsam2.def (revision label, optional checkpoints) beside the
sources it copies and runs ``apptainer build`` (or ``singularity build``) from the repository
root, so %files paths resolve the same way as in ``docker build .``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from medsam2_hpc.atomic import write_text
from medsam2_hpc.errors import EXIT_FAILURE, InputError
from medsam2_hpc.hpc import containers

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
                                 "with --sandbox)")
    b.add_argument("--force", action="store_true", help="overwrite an existing image")
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
    """Check everything first (runtime, definition, output, checkpoints), then build."""
    definition = Path(args.definition).resolve()
    context = definition.parent.parent
    runtime = containers.find_runtime(args.runtime)
    problems = containers.check(definition, dockerfile=None)
    if problems:
        raise InputError(f"{definition}: {len(problems)} problem(s): " + "; ".join(problems))
    default = "build/medsam2-sandbox" if args.sandbox else "containers/medsam2.sif"
    out = Path(args.out or context / default).resolve()
    if out.exists() and not args.force:
        raise InputError(f"--out: {out} exists; remove it or pass --force")
    checkpoints = sorted(p.relative_to(context).as_posix() for p in context.glob(CHECKPOINT_GLOB))
    if args.with_checkpoints and not checkpoints:
        raise InputError(f"--with-checkpoints: no {context / CHECKPOINT_GLOB}; "
                         "run bash checkpoints/download_ckpts.sh")
    rendered = containers.render(definition.read_text(encoding="utf-8"),
                                 revision=containers.git_revision(context),
                                 checkpoints=checkpoints if args.with_checkpoints else ())
    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside the sources, so relative %files paths resolve whichever way the runtime reads them.
    build_def = write_text(context / f".medsam2-build-{os.getpid()}.def", rendered)
    argv = containers.build_argv(runtime, out, build_def.name, fakeroot=args.fakeroot,
                                 sandbox=args.sandbox, force=args.force)
    print("+ " + " ".join(argv), flush=True)
    try:
        code = subprocess.run(argv, cwd=context).returncode
    finally:
        build_def.unlink(missing_ok=True)
    if code != 0:
        print(f"medsam2-hpc container build: {Path(runtime).name} build failed (exit {code})",
              file=sys.stderr)
        return EXIT_FAILURE
    print(f"built {out}")
    return 0
