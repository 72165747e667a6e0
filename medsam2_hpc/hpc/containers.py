"""The Apptainer image: its definition (checked, rendered, built), its Dockerfile, its exec line.

``containers/medsam2.def`` is the one source. spython 0.3.14 reads it; its Singularity writer
corrupts %files/%labels, so the only generated artefact is the Dockerfile (Singularity ->
Docker), with four fix-ups spython lacks, each pinned by a test, so that spython's own
DockerParser reads the result back to the same recipe (the round trip the tests check):

* %test becomes build-time ``RUN`` steps (spython would write a ``HEALTHCHECK`` Docker rejects);
  Apptainer runs %test right after a build too, so both images are smoke-tested the same way.
* ``exec prog "$@"`` in %runscript becomes ``ENTRYPOINT ["prog"]`` (a shell-form CMD drops args).
* labels are written ``key="value"`` (spython writes the legacy ``LABEL key value``).
* the single stage is not named: spython writes ``FROM img AS spython-base``, which its own
  DockerParser cannot read back.

spython's parser also takes any line containing "bootstrap", "from:" or "stage:" for a header,
and its Docker writer passes through any ENV/RUN line containing "USER" without its keyword:
the definition avoids those words outside the header, and ``check`` reports them.
spython's client only knows a binary named ``singularity`` and defaults to sudo, so builds
call ``apptainer``/``singularity`` directly with an argv we build.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from spython.main.parse.parsers import SingularityParser
from spython.main.parse.recipe import Recipe
from spython.main.parse.writers import DockerWriter

from .. import __version__
from ..checkpoints import BAKED_DIR
from ..contract import GIT_SHA_ENV
from ..errors import InputError
from ..spec import Bind, ContainerSpec

__all__ = ["REPO_ROOT", "DEF_PATH", "DOCKERFILE_PATH", "Definition", "parse", "check", "setup_requires",
           "def_requires", "to_dockerfile", "git_revision", "render", "find_runtime", "build_argv",
           "cache_env", "exec_prefix", "exec_prefix_str", "BOOTSTRAPS", "DEFAULT_MIRROR",
           "debootstrap_post", "torch_version", "compare_renderings", "LAYERS", "DEPS_LABEL", "deps_key",
           "base_deps_key"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEF_PATH = REPO_ROOT / "containers" / "medsam2.def"
DOCKERFILE_PATH = REPO_ROOT / "containers" / "Dockerfile"
SETUP_CFG = REPO_ROOT / "setup.cfg"

REQUIRED_SECTIONS = ("labels", "help", "files", "environment", "post", "test", "runscript")
REQUIRED_ENV = ("TORCH_HOME", "HF_HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME", "YOLO_CONFIG_DIR",
                "YOLO_OFFLINE", "YOLO_AUTOINSTALL")
# The %post comment that introduces the install_requires command (see containers/medsam2.def).
REQUIRES_MARKER = "# install_requires of setup.cfg"
# The %post comment after which only medsam2-hpc itself is installed: the package layer.
PACKAGE_MARKER = "# package layer:"
# full: the whole image; deps: all but our package (cached, rebuilt when the requirements change);
# package: our package on top of a deps image (`container build --base`), minutes instead of half an hour.
LAYERS = ("full", "deps", "package")
DEPS_LABEL = "medsam2.deps"  # on a deps image: deps_key() of the definition it was built from
CHECKPOINT_DIR = str(BAKED_DIR)  # where the trainers look (checkpoints.py), so bake there
CHECKPOINTS_LABEL = "medsam2.checkpoints"  # the file names baked there (also in the image record)
DOCKER_HEADER = ("# Generated from containers/medsam2.def by `medsam2-hpc container dockerfile --write`;\n"
                 "# do not edit. Build from the repository root:\n"
                 "#   docker build -f containers/Dockerfile "
                 "--label org.opencontainers.image.revision=$(git rev-parse HEAD) -t medsam2-hpc .\n")
BOOTSTRAPS = ("docker", "debootstrap")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "bookworm"
# mksquashfs settings per --compression; zstd at level 3 squashes GBs of CUDA wheels several times
# faster than gzip (and than zstd's default 15) at about gzip's size.
COMPRESSION = {"gzip": "-comp gzip", "zstd": "-comp zstd -Xcompression-level 3", "lz4": "-comp lz4"}
# Files only the build needs (pip.conf, the host CA bundle): copied in by %files, removed by %post.
BUILD_DIR = "/opt/medsam2-hpc/build"
_SPYTHON_TRAPS = re.compile(r"bootstrap|from:|stage:", re.IGNORECASE)
_RUNTIME_HELP = {
    "apptainer": "install Apptainer (https://apptainer.org/docs/admin/main/installation.html) "
                 "or `module load apptainer`",
    "singularity": "install SingularityCE (https://docs.sylabs.io/guides/latest/admin-guide/) "
                   "or `module load singularity`",
}


class _DefParser(SingularityParser):
    """spython's parser, with %test kept as commands (see the module docstring)."""

    def _test(self, lines: list[str]) -> None:
        self.test_lines = list(lines)
        self.recipe[self.active_layer].install += lines


@dataclass(frozen=True)
class Definition:
    """A parsed definition: spython's recipe plus what spython does not keep."""

    path: Path
    text: str
    sections: tuple[str, ...]
    recipe: Recipe  # spython's, of the single stage
    test_lines: tuple[str, ...]

    @property
    def base_image(self) -> str:
        return self.recipe.fromHeader or ""

    @property
    def env_keys(self) -> tuple[str, ...]:
        return tuple(e.split("=", 1)[0].strip() for e in self.recipe.environ)

    @property
    def labels(self) -> dict[str, str]:
        return dict((line.split(None, 1) + [""])[:2] for line in self.recipe.labels)


def parse(path: str | os.PathLike = DEF_PATH) -> Definition:
    """Parse with spython (raises InputError where spython would exit the process)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such container definition")
    text = path.read_text(encoding="utf-8")
    header = text.split("\n%", 1)[0]
    if not re.search(r"^\s*bootstrap:\s*docker\s*$", header, re.IGNORECASE | re.MULTILINE):
        raise InputError(f"{path}: the header must say 'Bootstrap: docker' (spython converts only those)")
    parser = _DefParser(str(path))
    stages = list(parser.recipe.values())
    if len(stages) != 1:
        raise InputError(f"{path}: expected one stage, found {len(stages)}")
    sections = tuple(m.group(1).lower() for m in re.finditer(r"^%(\w+)", text, re.MULTILINE))
    return Definition(path, text, sections, stages[0], tuple(getattr(parser, "test_lines", ())))


# ---------------------------------------------------------------------------------------------
# Requirements: the image installs exactly setup.cfg's install_requires


def _norm(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def setup_requires(setup_cfg: str | os.PathLike = SETUP_CFG) -> list[str]:
    cfg = configparser.ConfigParser()
    if not cfg.read(setup_cfg, encoding="utf-8"):
        raise InputError(f"{setup_cfg}: cannot be read")
    raw = cfg.get("options", "install_requires", fallback="")
    return [line.strip() for line in raw.splitlines() if line.strip() and not line.strip().startswith("#")]


def _section_body(text: str, name: str) -> list[str]:
    match = re.search(rf"^%{name}\b[^\n]*\n(.*?)(?=^%|\Z)", text, re.MULTILINE | re.DOTALL)
    return match.group(1).splitlines() if match else []


def def_requires(text: str) -> list[str] | None:
    """The requirements of the pip command that follows REQUIRES_MARKER in %post (None: no marker)."""
    lines = [line.strip() for line in _section_body(text, "post")]
    if REQUIRES_MARKER not in "\n".join(lines):
        return None
    start = next(i for i, line in enumerate(lines) if line.startswith(REQUIRES_MARKER)) + 1
    command = ""
    for line in lines[start:]:
        command += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            break
    tokens = shlex.split(command)
    if tokens[:4] != ["python3", "-m", "pip", "install"]:
        return []
    return [t for t in tokens[4:] if not t.startswith("-")]


# ---------------------------------------------------------------------------------------------
# check


def _pinned(image: str) -> bool:
    """An image is pinned by a digest, or by a tag with an exact version (never 'latest')."""
    if "@sha256:" in image:
        return True
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    return bool(re.match(r"\d+\.\d+\.\d+", tag))


def check(path: str | os.PathLike = DEF_PATH, *, setup_cfg: str | os.PathLike = SETUP_CFG,
          dockerfile: str | os.PathLike | None = DOCKERFILE_PATH) -> list[str]:
    """Every problem of the definition, one line each; [] when it is fit to build."""
    d = parse(path)
    problems = [f"missing section %{s}" for s in REQUIRED_SECTIONS if s not in d.sections]
    if not _pinned(d.base_image):
        problems.append(f"base image {d.base_image!r} is not pinned (use an exact version tag or @sha256:)")
    for key in REQUIRED_ENV:
        if key not in d.env_keys:
            problems.append(f"%environment does not set {key}")
    if d.labels.get("org.opencontainers.image.version") != __version__:
        problems.append(f"%labels org.opencontainers.image.version is not the package version {__version__}")
    if "medsam2-hpc" not in (d.recipe.cmd or ""):
        problems.append("%runscript does not run medsam2-hpc")
    problems += _requirement_problems(d.text, setup_requires(setup_cfg))
    problems += _trap_problems(d.text)
    if dockerfile is not None and Path(dockerfile).is_file() and not problems:
        if Path(dockerfile).read_text(encoding="utf-8") != to_dockerfile(path):
            problems.append(f"{dockerfile} differs from what the definition generates "
                            "(run: medsam2-hpc container dockerfile --write)")
    return problems


def _requirement_problems(text: str, wanted: list[str]) -> list[str]:
    have = def_requires(text)
    if have is None:
        return [f"%post has no {REQUIRES_MARKER!r} line before the pip install of the requirements"]
    missing = [r for r in wanted if _norm(r) not in {_norm(h) for h in have}]
    extra = [r for r in have if _norm(r) not in {_norm(w) for w in wanted}]
    out = []
    if missing:
        out.append(f"%post does not install setup.cfg requirements {', '.join(missing)}")
    if extra:
        out.append(f"%post installs {', '.join(extra)}, which setup.cfg does not name")
    return out


def _trap_problems(text: str) -> list[str]:
    """Lines spython would misread (see the module docstring)."""
    body = text.split("\n%", 1)[1] if "\n%" in text else ""
    out = [f"spython would misread this line as a header: {line.strip()!r}"
           for line in body.splitlines() if _SPYTHON_TRAPS.search(line)]
    for section in ("environment", "post", "test"):
        out += [f"spython's Docker writer would drop the keyword of: {line.strip()!r}"
                for line in _section_body(text, section)
                if "USER" in line and not line.strip().startswith("#")]
    return out


# ---------------------------------------------------------------------------------------------
# Dockerfile


def to_dockerfile(path: str | os.PathLike = DEF_PATH) -> str:
    """The Dockerfile for ``path``: spython's Singularity -> Docker conversion plus the fix-ups."""
    d = parse(path)
    recipe = d.recipe
    recipe.labels = [f"{k}={json.dumps(v)}" for k, v in d.labels.items()]
    runscript = shlex.split(recipe.cmd or "")
    if runscript[:1] == ["exec"] and runscript[-1:] == ["$@"]:
        recipe.entrypoint, recipe.cmd = json.dumps(runscript[1:-1]), None
    body = DockerWriter({"spython-base": recipe}).convert()
    body = re.sub(r"^(FROM \S+) AS spython-base$", r"\1", body, count=1, flags=re.MULTILINE)
    return DOCKER_HEADER + body + "\n"


# ---------------------------------------------------------------------------------------------
# build


def git_revision(root: Path = REPO_ROOT) -> str:
    """HEAD's sha (with '-dirty' for uncommitted changes), or 'unknown' outside a git checkout."""
    if not shutil.which("git"):
        return "unknown"
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def render(text: str, *, revision: str, checkpoints: Iterable[str] = (), bootstrap: str = "docker",
           mirror: str = DEFAULT_MIRROR, pip_files: Sequence[str] = (), layer: str = "full",
           base: str | None = None) -> str:
    """The definition as built: the revision label filled in and stamped into %environment as
    ``MEDSAM2_GIT_SHA`` (metrics.json's ``git_sha`` inside the image, which has no .git; not for
    an unknown revision), checkpoints added to %files and named in the ``medsam2.checkpoints`` label.

    ``checkpoints`` are paths relative to the build context (the repository root).
    ``bootstrap="debootstrap"`` swaps the docker base for Debian bookworm from ``mirror`` and
    installs what the base image would have brought (:func:`debootstrap_post`); every other line
    stays the definition's. ``pip_files`` (relative to the context: a pip.conf, optionally a CA
    bundle) are copied to :data:`BUILD_DIR` for %post's pip and deleted at its end.

    ``layer="deps"`` renders everything but our package: %post up to :data:`PACKAGE_MARKER`, no
    %files, %test or %runscript, labelled with :func:`deps_key`. ``layer="package"`` renders the
    rest on top of the image ``base`` (``Bootstrap: localimage``): the %post after the marker and
    every other section; the base's ``base.name`` label stays the base's.
    """
    if layer not in LAYERS:
        raise InputError(f"layer {layer!r} is not one of {', '.join(LAYERS)}")
    if (layer == "package") != (base is not None):
        raise InputError("--base: the package layer needs a base image, and only it takes one")
    key = deps_key(text) if layer == "deps" else None
    text = _layer_text(text, layer)
    text, n = re.subn(r"^(\s*org\.opencontainers\.image\.revision)\s+\S+\s*$",
                      lambda m: f"{m.group(1)} {revision}", text, count=1, flags=re.MULTILINE)
    if n != 1:
        raise InputError("containers/medsam2.def: %labels has no org.opencontainers.image.revision line")
    files = [f"{c} {CHECKPOINT_DIR}/{Path(c).name}" for c in checkpoints]
    files += [f"{f} {BUILD_DIR}/{Path(f).name}" for f in pip_files]
    post = [f"export PIP_CONFIG_FILE={BUILD_DIR}/pip.conf"] if pip_files else []
    if base is not None:
        if re.search(r"[\s\x00-\x1f]", base):
            raise InputError(f"--base {base!r}: the path may not contain spaces or control characters")
        text = f"Bootstrap: localimage\nFrom: {base}\n\n%" + text.split("\n%", 1)[1]
        text = re.sub(r"^\s*org\.opencontainers\.image\.base\.name\s+\S+\s*\n", "", text, count=1,
                      flags=re.MULTILINE)
    elif bootstrap == "debootstrap":
        header, rest = text.split("\n%", 1)
        base = _header_value(header, "From")
        text = _debootstrap_header(mirror) + "\n%" + rest
        text = re.sub(r"^(\s*org\.opencontainers\.image\.base\.name)\s+\S+\s*$",
                      lambda m: f"{m.group(1)} debian:{DEBIAN_SUITE}", text, count=1, flags=re.MULTILINE)
        post += debootstrap_post(base)
    elif bootstrap != "docker":
        raise InputError(f"--bootstrap {bootstrap!r} is not one of {', '.join(BOOTSTRAPS)}")
    text = _prepend(text, "files", files)
    text = _prepend(text, "post", post)
    if revision != "unknown" and layer != "deps":
        text = _prepend(text, "environment", [f"export {GIT_SHA_ENV}={shlex.quote(revision)}"])
    if key is not None:
        text = _prepend(text, "labels", [f"{DEPS_LABEL} {key}"])
    if checkpoints:
        names = ",".join(Path(c).name for c in checkpoints)
        text = _prepend(text, "labels", [f"{CHECKPOINTS_LABEL} {names}"])
    if pip_files:
        text = re.sub(r"^(%post\b.*?)(?=^%|\Z)", lambda m: m.group(1).rstrip("\n")
                      + f"\n    rm -rf {BUILD_DIR}\n\n", text, count=1, flags=re.MULTILINE | re.DOTALL)
    return text


def _layer_text(text: str, layer: str) -> str:
    """The definition cut to one layer (see :func:`render`); ``full`` is the definition itself."""
    if layer == "full":
        return text
    post = _section_body(text, "post")
    cut = next((i for i, line in enumerate(post) if line.strip().startswith(PACKAGE_MARKER)), None)
    if cut is None:
        raise InputError(f"containers/medsam2.def: %post has no {PACKAGE_MARKER!r} line before the "
                         "install of medsam2-hpc itself")
    keep = post[:cut] if layer == "deps" else post[cut:]
    text = _replace_section(text, "post", keep + [""])
    if layer == "deps":
        text = _replace_section(text, "files", [""])  # emptied: pip.conf and the CA bundle may come in
        for section in ("test", "runscript"):
            text = _replace_section(text, section, None)
    return text


def _replace_section(text: str, section: str, lines: Sequence[str] | None) -> str:
    """``lines`` as the body of ``%section`` (None: drop the section; a missing one is added)."""
    pattern = re.compile(rf"^%{section}\b[^\n]*\n.*?(?=^%|\Z)", re.MULTILINE | re.DOTALL)
    new = "" if lines is None else f"%{section}\n" + "".join(f"{line}\n" for line in lines)
    if pattern.search(text):
        return pattern.sub(lambda m: new, text, count=1)
    return text.rstrip("\n") + "\n\n" + new if new else text


def deps_key(text: str) -> str:
    """Identity of the definition's dependency layer: its text cut to the deps layer. A deps image
    carries it as :data:`DEPS_LABEL`; ``container build --base`` refuses a base whose key differs
    (other requirements, environment or set-up), so a stale base is never built upon silently."""
    return hashlib.sha256(_layer_text(text, "deps").encode()).hexdigest()[:16]


def base_deps_key(runtime: str, base: str | os.PathLike) -> str | None:
    """The :data:`DEPS_LABEL` of a built image (``<runtime> inspect --labels``); None when absent."""
    out = subprocess.run([runtime, "inspect", "--labels", os.fspath(base)], capture_output=True, text=True)
    if out.returncode != 0:
        raise InputError(f"--base {base}: {Path(runtime).name} inspect cannot read it: "
                         + (out.stderr.strip().splitlines() or ["no message"])[-1])
    for line in out.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == DEPS_LABEL:
            return value.strip()
    return None


def _prepend(text: str, section: str, lines: Sequence[str]) -> str:
    block = "".join(f"    {line}\n" for line in lines)
    return re.sub(rf"^%{section}[^\n]*\n", lambda m: m.group(0) + block, text, count=1, flags=re.MULTILINE)


def _header_value(header: str, key: str) -> str:
    match = re.search(rf"^\s*{key}:\s*(\S+)\s*$", header, re.IGNORECASE | re.MULTILINE)
    if not match:
        raise InputError(f"containers/medsam2.def: the header has no '{key}:' line")
    return match.group(1)


def _debootstrap_header(mirror: str) -> str:
    if not re.fullmatch(r"(https?|file)://[^\s\x00-\x1f]+", mirror):
        raise InputError(f"--mirror {mirror!r}: expected an http(s):// or file:// URL of a Debian archive")
    return f"Bootstrap: debootstrap\nOSVersion: {DEBIAN_SUITE}\nMirrorURL: {mirror}\n"


def torch_version(base_image: str) -> str:
    """The torch release a ``pytorch/pytorch:<version>-cuda...`` base ships."""
    match = re.match(r"(\d+\.\d+\.\d+)-cuda", base_image.rsplit(":", 1)[-1])
    if not match:
        raise InputError(f"containers/medsam2.def: cannot tell the torch version of base {base_image!r}")
    return match.group(1)


def debootstrap_post(base_image: str) -> list[str]:
    """What the docker base brings, for a bare Debian: Python 3.11 (as `python` too) and the same
    torch release as CUDA-enabled wheels from PyPI (torchvision resolves to its matching release)."""
    return [
        "# Debian base: what the docker base image ships (Python, torch with CUDA) comes first",
        "export DEBIAN_FRONTEND=noninteractive && apt-get update && "
        "apt-get install -y --no-install-recommends python3 python3-pip python-is-python3 ca-certificates "
        "&& rm -rf /var/lib/apt/lists/*",
        "python3 -m pip install --no-cache-dir --break-system-packages "
        f'"torch=={torch_version(base_image)}" torchvision',
    ]


def compare_renderings(docker: str, debootstrap: str) -> list[str]:
    """Where two renderings of the definition differ though they should not: the packages
    (each equal to setup.cfg), %environment, %labels (but the base name), %test, %runscript."""
    problems = []
    for section in ("environment", "test", "runscript", "files", "help"):
        if _section_body(docker, section) != _section_body(debootstrap, section):
            problems.append(f"%{section} differs between the docker and debootstrap renderings")
    labels = [{k: v for k, v in (line.split(None, 1) for line in _section_body(t, "labels") if line.strip())
               if k != "org.opencontainers.image.base.name"} for t in (docker, debootstrap)]
    if labels[0] != labels[1]:
        problems.append("%labels differ between the docker and debootstrap renderings")
    wanted = setup_requires()
    for name, text in (("docker", docker), ("debootstrap", debootstrap)):
        problems += [f"{name} rendering: {p}" for p in _requirement_problems(text, wanted)]
    return problems


def find_runtime(name: str | None = None) -> str:
    """Path of the container runtime: ``name``, else apptainer, else singularity.

    Raises InputError naming the missing binary and how to get it (exit 2, one line).
    """
    names = [name] if name else ["apptainer", "singularity"]
    for candidate in names:
        found = shutil.which(candidate)
        if found:
            return found
    if name:
        raise InputError(f"--runtime {name}: {name} is not on PATH; {_RUNTIME_HELP[name]}, "
                         "or build elsewhere and copy the image")
    raise InputError(f"container build: neither apptainer nor singularity is on PATH; "
                     f"{_RUNTIME_HELP['apptainer']}, or build elsewhere and copy the image")


def build_argv(runtime: str, out: str | os.PathLike, definition: str | os.PathLike, *,
               fakeroot: bool = False, sandbox: bool = False, force: bool = False,
               compression: str | None = None) -> list[str]:
    argv = [runtime, "build"]
    argv += ["--fakeroot"] * fakeroot + ["--sandbox"] * sandbox + ["--force"] * force
    if compression and not sandbox:
        argv += ["--mksquashfs-args", COMPRESSION[compression]]
    return argv + [os.fspath(out), os.fspath(definition)]


# ---------------------------------------------------------------------------------------------
# exec: the command line a task runs under


def cache_env(cache: str | os.PathLike) -> dict[str, str]:
    """Writable cache variables under ``cache`` (the image is read-only)."""
    cache = os.fspath(cache)
    sub = {"TORCH_HOME": "torch", "HF_HOME": "huggingface", "MPLCONFIGDIR": "matplotlib",
           "XDG_CACHE_HOME": "xdg", "YOLO_CONFIG_DIR": "ultralytics"}
    return {"MEDSAM2_CACHE": cache, **{k: os.path.join(cache, v) for k, v in sub.items()}}


def _bind_arg(bind: Bind) -> str:
    for path in (bind.src, bind.dst):
        if "," in path or ":" in path:
            raise InputError(f"container.binds: {path!r} contains ',' or ':', "
                             "which apptainer --bind cannot take")
    if bind.mode not in ("ro", "rw"):
        raise InputError(f"container.binds: mode {bind.mode!r} of {bind.src!r} is not ro or rw")
    return f"{bind.src}:{bind.dst}:{bind.mode}"


def exec_prefix(container: ContainerSpec, *, gpus: int, binds: Sequence[Bind] = (),
                cache: str | os.PathLike | None = None) -> list[str]:
    """argv that runs a command inside the image; [] for runtime 'none' (run on the host).

    ``--nv`` only when the task has GPUs (and ``container.nv`` allows it): without a GPU it
    only warns, but on GPU-less nodes it may fail to find the driver. Binds are
    ``container.binds`` then ``binds`` (the launcher's data ro, output and checkpoints rw),
    deduplicated by container path. ``cache``, when given, is bound read-write and the cache
    variables point into it. ``HOME`` in ``container.env`` becomes ``--home`` (the directory
    must exist). ``--cleanenv``: nothing of the host environment reaches the image but these
    ``--env`` values and, at run time, the variables the host wrapper hands over
    (:data:`medsam2_hpc.hpc.requeue.PASS_ENV`: Slurm's, submitit's, the DDP rendezvous, the bound
    GPUs); PYTHONNOUSERSITE keeps ~/.local out of it.
    """
    if container.runtime == "none":
        return []
    if not container.image:
        raise InputError(f"container.image: runtime {container.runtime} needs an image")
    argv = [container.runtime, "exec", "--cleanenv"]
    if gpus > 0 and container.nv:
        argv.append("--nv")
    all_binds = [*container.binds, *binds]
    if cache is not None:
        all_binds.append(Bind(os.fspath(cache), os.fspath(cache), "rw"))
    seen: set[str] = set()
    for bind in all_binds:
        if bind.dst not in seen:
            seen.add(bind.dst)
            argv += ["--bind", _bind_arg(bind)]
    env = {"PYTHONNOUSERSITE": "1", **(cache_env(cache) if cache is not None else {}), **container.env}
    if "HOME" in env:  # apptainer ignores --env HOME ("not permitted"); --home sets and binds it
        argv += ["--home", env.pop("HOME")]
    for key, value in env.items():
        if "," in value:
            raise InputError(f"container.env.{key}: {value!r} contains ',', which apptainer --env splits on")
        argv += ["--env", f"{key}={value}"]
    return argv + [container.image]


def exec_prefix_str(container: ContainerSpec, *, gpus: int, binds: Sequence[Bind] = (),
                    cache: str | os.PathLike | None = None) -> str:
    """exec_prefix as one shell-quoted string (submitit inserts its ``python`` option verbatim)."""
    return shlex.join(exec_prefix(container, gpus=gpus, binds=binds, cache=cache))
