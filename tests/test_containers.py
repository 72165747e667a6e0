"""containers/medsam2.def, its generated Dockerfile, `medsam2-hpc container`, and the exec line.

No Apptainer or Singularity binary exists on these machines: tests that need one put a
stand-in shell script named ``apptainer`` on PATH that records its argv (and the definition
it was given) and say so in their names (``..._with_standin_apptainer``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from spython.main.parse.parsers import DockerParser, SingularityParser
from spython.main.parse.writers import DockerWriter

from medsam2_hpc import __version__
from medsam2_hpc.cli import main
from medsam2_hpc.errors import InputError
from medsam2_hpc.hpc import containers as c
from medsam2_hpc.hpc import image, pipconfig
from medsam2_hpc.spec import Bind, ContainerSpec

ROOT = c.REPO_ROOT


def _write(path: Path, text: str, executable: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if executable:
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# ------------------------------------------------------------------------------ the definition

def test_spython_parses_the_definition_into_what_the_package_needs():
    d = c.parse()
    assert set(c.REQUIRED_SECTIONS) <= set(d.sections)
    assert d.base_image == "pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime"
    env = dict(e.split("=", 1) for e in d.recipe.environ)
    assert env["YOLO_OFFLINE"] == "1" and env["YOLO_AUTOINSTALL"] == "False"
    for key in ("TORCH_HOME", "HF_HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME", "YOLO_CONFIG_DIR"):
        assert "$MEDSAM2_CACHE/" in env[key], key  # under the writable cache, overridable
    assert d.labels["org.opencontainers.image.version"] == __version__
    assert d.recipe.cmd == 'exec medsam2-hpc "$@"'
    assert any("import medsam2_hpc" in t for t in d.test_lines)
    assert any("build_sam2('sam2_hiera_t.yaml', None, device='cpu')" in t for t in d.test_lines)
    sources = [line.split()[0] for line in d.recipe.files]
    assert {"medsam2_hpc", "setup.cfg", "pyproject.toml", "README.md"} <= set(sources)
    assert all((ROOT / s).exists() for s in sources)  # every %files source is in the checkout


def test_image_installs_exactly_the_requirements_of_setup_cfg():
    assert c.def_requires(c.DEF_PATH.read_text()) == c.setup_requires()
    assert "sam2==1.1.0" in c.setup_requires()


def test_committed_definition_passes_check():
    assert c.check() == []


def test_committed_dockerfile_equals_generated():
    assert c.DOCKERFILE_PATH.read_text() == c.to_dockerfile(), \
        "regenerate with: medsam2-hpc container dockerfile --write"


def test_generated_dockerfile_reads_back_to_the_same_recipe(tmp_path):
    """The round trip: spython's DockerParser gives back what SingularityParser read."""
    d = c.parse()
    back = DockerParser(str(_write(tmp_path / "Dockerfile", c.to_dockerfile()))).recipe["spython-base"]
    assert back.fromHeader == d.base_image
    assert back.environ == d.recipe.environ
    assert back.files == [line.split() for line in d.recipe.files]
    assert back.entrypoint == ["medsam2-hpc"]
    run = [x for x in back.install if not x.startswith("#") and x not in back.environ]
    assert run == [x for x in d.recipe.install if not x.startswith("#")]  # %post then %test
    assert [lab[0] for lab in back.labels] == [f'{k}="{v}"' for k, v in d.labels.items()]


def test_spython_0_3_14_writer_quirks_that_the_fixups_rely_on(tmp_path):
    """Pins spython's own Singularity -> Docker output; if this fails, revisit the fix-ups."""
    raw = _write(tmp_path / "x.def", "Bootstrap: docker\nFrom: debian:12.5\n%labels\n    a.b 1\n"
                 "%environment\n    export PYTHONNOUSERSITE=1\n%test\n    true\n"
                 "%runscript\n    exec prog \"$@\"\n")
    text = DockerWriter(SingularityParser(str(raw)).recipe).convert()
    assert "FROM debian:12.5 AS spython-base" in text  # its DockerParser cannot read this back
    assert "LABEL a.b 1" in text  # legacy label form
    assert "HEALTHCHECK /bin/bash /tests.sh" in text  # not valid Docker
    assert "\nPYTHONNOUSERSITE=1" in text  # "USER" inside a line drops the ENV keyword
    assert 'CMD exec prog "$@"' in text
    fixed = c.to_dockerfile(raw)
    assert "HEALTHCHECK" not in fixed and "RUN true" in fixed
    assert 'ENTRYPOINT ["prog"]' in fixed and 'LABEL a.b="1"' in fixed
    assert "\nFROM debian:12.5\n" in fixed


def _broken_def(tmp_path: Path) -> Path:
    text = c.DEF_PATH.read_text()
    text = text.replace("pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime\n", "pytorch/pytorch:latest\n", 1)
    text = text.replace('        "tabulate>=0.9"', '        "tabulate>=0.9" \\\n        "requests"')
    text = text.replace('        "pandas>=2.1" \\\n', "")
    text = text.replace("    export YOLO_OFFLINE=1\n", "    export LOGIN_USER=me\n")
    text = text[:text.index("%test")] + text[text.index("%runscript"):]
    return _write(tmp_path / "containers" / "medsam2.def", text)


def test_check_reports_every_problem(tmp_path):
    problems = c.check(_broken_def(tmp_path), dockerfile=None)
    text = "\n".join(problems)
    assert "missing section %test" in text
    assert "'pytorch/pytorch:latest' is not pinned" in text
    assert "does not install setup.cfg requirements pandas>=2.1" in text
    assert "installs requests, which setup.cfg does not name" in text
    assert "%environment does not set YOLO_OFFLINE" in text
    assert "drop the keyword of: 'export LOGIN_USER=me'" in text


def test_container_check_command_exits_2_with_one_line(tmp_path, capsys):
    assert main(["container", "check", "--def", str(_broken_def(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "problem(s)" in err and "pandas" in err


def test_container_check_command_passes_on_the_committed_files(capsys):
    assert main(["container", "check"]) == 0
    wanted = len(c.setup_requires())
    assert f"{wanted} requirements equal to setup.cfg" in capsys.readouterr().out


def test_dockerfile_command_prints_and_writes(tmp_path, capsys):
    definition = _write(tmp_path / "containers" / "medsam2.def", c.DEF_PATH.read_text())
    assert main(["container", "dockerfile", "--def", str(definition)]) == 0
    assert capsys.readouterr().out == c.to_dockerfile()
    assert main(["container", "dockerfile", "--write", "--def", str(definition)]) == 0
    assert (tmp_path / "containers" / "Dockerfile").read_text() == c.to_dockerfile()


def test_render_fills_revision_and_bakes_checkpoints():
    text = c.render(c.DEF_PATH.read_text(), revision="abc123",
                    checkpoints=["checkpoints/sam2_hiera_tiny.pt"])
    assert "org.opencontainers.image.revision abc123" in text
    files = c._section_body(text, "files")
    assert files[0].split() == ["checkpoints/sam2_hiera_tiny.pt",
                                "/opt/medsam2-hpc/checkpoints/sam2_hiera_tiny.pt"]
    # the image has no .git: metrics.json's git_sha comes from the stamped variable
    def lines(section: str) -> list[str]:
        return [line.strip() for line in c._section_body(text, section)]

    assert "export MEDSAM2_GIT_SHA=abc123" in lines("environment")
    assert "medsam2.checkpoints sam2_hiera_tiny.pt" in lines("labels")
    plain = c.render(c.DEF_PATH.read_text(), revision="unknown")
    assert "MEDSAM2_GIT_SHA" not in plain and "medsam2.checkpoints" not in plain  # null, not 'unknown'


def test_image_record_is_a_cache_that_follows_the_image(tmp_path):
    img = _write(tmp_path / "m.sif", "an image")
    record = image.write_record(img, revision="abc", checkpoints=["sam2_hiera_tiny.pt"])
    assert record == image.ImageRecord(f"sha256:{hashlib.sha256(b'an image').hexdigest()}", "abc",
                                       ("sam2_hiera_tiny.pt",))
    assert image.read_record(img) == record
    copy = tmp_path / "copy" / "m.sif"  # copied with its record: hashed again, same content, same record
    copy.parent.mkdir()
    shutil.copyfile(img, copy)
    shutil.copyfile(image.record_path(img), image.record_path(copy))
    os.utime(copy, ns=(1, 1))
    assert image.read_record(copy) == record
    img.write_text("another image")  # rebuilt without a record: its checkpoints are not known
    assert image.read_record(img) == image.ImageRecord(
        f"sha256:{hashlib.sha256(b'another image').hexdigest()}", None, None)
    assert image.read_record(tmp_path / "missing.sif") is None
    assert image.read_record("docker://pytorch/pytorch:2.5.1") is None


# ------------------------------------------------------------------------------ build

STANDIN = """#!/usr/bin/env bash
# Stand-in for the apptainer binary (none exists here): records what it was asked to do.
if [ "$1" = inspect ]; then echo "org.opencontainers.image.title: medsam2-hpc"; \
    [ -z "${STANDIN_DEPS:-}" ] || echo "medsam2.deps: $STANDIN_DEPS"; exit 0; fi
printf '%s\\n' "$@" > "$RECORD/argv"
pwd > "$RECORD/cwd"
cp "${@: -1}" "$RECORD/build.def"
[ "${STANDIN_EXIT:-0}" = 0 ] || exit "$STANDIN_EXIT"
out="${@: -2:1}"
case " $* " in *" --sandbox "*) mkdir -p "$out";; *) printf 'a built image' > "$out";; esac
"""


@pytest.fixture()
def standin_apptainer(tmp_path, monkeypatch):
    """A fake `apptainer` alone on PATH (besides git), recording argv, cwd and the definition."""
    bindir, record = tmp_path / "bin", tmp_path / "record"
    record.mkdir()
    _write(bindir / "apptainer", STANDIN, executable=True)
    git = shutil.which("git")
    if git:
        os.symlink(git, bindir / "git")
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("RECORD", str(record))
    return record


def _repo_copy(tmp_path: Path) -> Path:
    """A build context: containers/medsam2.def and a (fake, small) checkpoint."""
    ctx = tmp_path / "repo"
    _write(ctx / "containers" / "medsam2.def", c.DEF_PATH.read_text())
    _write(ctx / "checkpoints" / "sam2_hiera_tiny.pt", "not a real checkpoint")
    return ctx


def test_build_runs_the_runtime_with_standin_apptainer(tmp_path, standin_apptainer):
    ctx = _repo_copy(tmp_path)
    out = tmp_path / "images with space" / "m.sif"
    code = main(["container", "build", "--fakeroot", "--with-checkpoints", "--out", str(out),
                 "--def", str(ctx / "containers" / "medsam2.def")])
    assert code == 0
    argv = (standin_apptainer / "argv").read_text().splitlines()
    assert argv[:3] == ["build", "--fakeroot", str(out)]
    assert argv[3].startswith(".medsam2-build-") and argv[3].endswith(".def")
    assert (standin_apptainer / "cwd").read_text().strip() == str(ctx)  # %files resolve from the root
    assert not (ctx / argv[3]).exists()  # the rendered definition is cleaned up
    built = (standin_apptainer / "build.def").read_text()
    assert "checkpoints/sam2_hiera_tiny.pt /opt/medsam2-hpc/checkpoints/sam2_hiera_tiny.pt" in built
    assert "org.opencontainers.image.revision unknown" in built  # the copy is no git checkout
    # the record beside the image: what submit on a login node knows of it (digest, baked checkpoints)
    assert image.read_record(out) == image.ImageRecord(
        f"sha256:{hashlib.sha256(b'a built image').hexdigest()}", "unknown", ("sam2_hiera_tiny.pt",))


def test_build_labels_the_git_revision_with_standin_apptainer(tmp_path, standin_apptainer):
    """The build context is a git checkout of its own (a copy, so the test needs no .git here)."""
    ctx = _repo_copy(tmp_path)
    git = ["git", "-C", str(ctx), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "build context"]):
        subprocess.run([*git, *args], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    head = head.stdout.strip()
    assert main(["container", "build", "--sandbox", "--out", str(tmp_path / "sandbox"),
                 "--def", str(ctx / "containers" / "medsam2.def")]) == 0
    argv = (standin_apptainer / "argv").read_text().splitlines()
    assert argv[:3] == ["build", "--sandbox", str(tmp_path / "sandbox")]
    assert c.git_revision(ctx) == head
    assert f"org.opencontainers.image.revision {head}" in (standin_apptainer / "build.def").read_text()
    (ctx / "containers" / "medsam2.def").write_text("changed")  # uncommitted edits are labelled as such
    assert c.git_revision(ctx) == f"{head}-dirty"


def test_build_failure_exits_1_with_standin_apptainer(tmp_path, standin_apptainer, monkeypatch, capsys):
    monkeypatch.setenv("STANDIN_EXIT", "3")
    ctx = _repo_copy(tmp_path)
    assert main(["container", "build", "--def", str(ctx / "containers" / "medsam2.def"),
                 "--out", str(tmp_path / "m.sif")]) == 1
    assert "apptainer build failed (exit 3)" in capsys.readouterr().err


def test_build_checks_inputs_before_running_with_standin_apptainer(tmp_path, standin_apptainer, capsys):
    ctx = _repo_copy(tmp_path)
    (ctx / "checkpoints" / "sam2_hiera_tiny.pt").unlink()
    definition = str(ctx / "containers" / "medsam2.def")
    assert main(["container", "build", "--with-checkpoints", "--def", definition,
                 "--out", str(tmp_path / "m.sif")]) == 2
    assert "--with-checkpoints: no " in capsys.readouterr().err
    existing = _write(tmp_path / "old.sif", "")
    assert main(["container", "build", "--def", definition, "--out", str(existing)]) == 2
    assert "exists; remove it or pass --force" in capsys.readouterr().err
    assert not (standin_apptainer / "argv").exists()  # the runtime never ran


def test_build_without_a_runtime_exits_2_naming_the_binary(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: neither binary is there
    assert main(["container", "build"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither apptainer nor singularity is on PATH" in err[0]
    assert main(["container", "build", "--runtime", "singularity"]) == 2
    assert "--runtime singularity: singularity is not on PATH" in capsys.readouterr().err


def test_build_sh_calls_the_same_command(tmp_path):
    """build.sh runs ``medsam2-hpc container build``, which calls ``apptainer build``: here a
    stand-in that records its argv, so no real build starts where Apptainer is installed. The
    definition is a copy in tmp_path (``--def``), so the rendered file and the image land there."""
    shutil.copytree(ROOT / "containers", tmp_path / "containers")
    calls = tmp_path / "apptainer.calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text("#!/bin/bash\n# Stand-in for apptainer: records the call, builds "
                                       f"nothing\necho \"$PWD: $*\" >> '{calls}'\n")
    (bin_dir / "apptainer").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(ROOT / "containers" / "build.sh"), "--runtime", "apptainer",
                           "--fakeroot", "--def", str(tmp_path / "containers" / "medsam2.def")],
                          capture_output=True, text=True, env=env)
    if not (ROOT / ".venv" / "bin" / "medsam2-hpc").exists():
        assert proc.returncode == 2 and "make venv" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    (call,) = calls.read_text().splitlines()
    here = re.escape(str(tmp_path))
    assert re.fullmatch(rf"{here}: build --fakeroot {here}/containers/medsam2\.sif \.medsam2-build-\d+\.def",
                        call), call


# ------------------------------------------------------------------------------ exec line

DATA = "/shared/my data/REFUGE"
OUT = "/scratch/runs out"
CKPT = "/shared/ckpts"


def _spec(**kw) -> ContainerSpec:
    return ContainerSpec(**{"image": "/images/medsam2 v1.sif", "runtime": "apptainer", **kw})


def _binds() -> list[Bind]:
    return [Bind(DATA, DATA, "ro"), Bind(OUT, OUT, "rw"), Bind(CKPT, CKPT, "rw")]


def test_exec_prefix_runs_on_the_host_for_runtime_none():
    assert c.exec_prefix(ContainerSpec(), gpus=1, binds=_binds()) == []


def test_exec_prefix_adds_nv_only_with_gpus():
    assert "--nv" not in c.exec_prefix(_spec(), gpus=0, binds=_binds())
    assert c.exec_prefix(_spec(), gpus=2, binds=_binds())[:4] == ["apptainer", "exec", "--cleanenv", "--nv"]
    assert "--nv" not in c.exec_prefix(_spec(nv=False), gpus=1, binds=_binds())


def test_exec_prefix_binds_data_ro_output_and_checkpoints_rw_and_the_cache():
    argv = c.exec_prefix(_spec(binds=(Bind("/site", "/site", "ro"),), env={"OMP_NUM_THREADS": "4"}),
                         gpus=1, binds=_binds(), cache="/scratch/cache dir")
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert binds == ["/site:/site:ro", f"{DATA}:{DATA}:ro", f"{OUT}:{OUT}:rw", f"{CKPT}:{CKPT}:rw",
                     "/scratch/cache dir:/scratch/cache dir:rw"]
    env = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--env")
    assert env["TORCH_HOME"] == "/scratch/cache dir/torch"
    assert env["YOLO_CONFIG_DIR"] == "/scratch/cache dir/ultralytics"
    assert env["MPLCONFIGDIR"] == "/scratch/cache dir/matplotlib"
    assert env["PYTHONNOUSERSITE"] == "1" and env["OMP_NUM_THREADS"] == "4"
    assert argv[-1] == "/images/medsam2 v1.sif"


def test_exec_prefix_sets_home_with_the_home_flag():
    """apptainer refuses --env HOME ("Overriding HOME ... is not permitted"): use --home."""
    argv = c.exec_prefix(_spec(env={"HOME": "/scratch/cache dir/home"}), gpus=0)
    assert argv[argv.index("--home") + 1] == "/scratch/cache dir/home"
    assert not any(a.startswith("HOME=") for a in argv)


def test_exec_prefix_keeps_the_first_bind_of_a_container_path():
    argv = c.exec_prefix(_spec(binds=(Bind(DATA, DATA, "ro"),)), gpus=0, binds=[Bind(DATA, DATA, "rw")])
    assert argv.count("--bind") == 1 and f"{DATA}:{DATA}:ro" in argv


def test_exec_prefix_rejects_what_apptainer_would_split():
    with pytest.raises(InputError, match="container.binds: '/a,b'"):
        c.exec_prefix(_spec(), gpus=0, binds=[Bind("/a,b", "/a,b", "ro")])
    with pytest.raises(InputError, match="container.env.X"):
        c.exec_prefix(_spec(env={"X": "1,2"}), gpus=0)


def test_exec_prefix_string_survives_the_shell_with_standin_apptainer(tmp_path):
    """submitit pastes its python option into a shell line: paths with spaces must stay whole."""
    record = tmp_path / "argv"
    standin = _write(tmp_path / "bin" / "apptainer",
                     f"#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" > {shlex.quote(str(record))}\n",
                     executable=True)
    argv = c.exec_prefix(_spec(), gpus=1, binds=_binds(), cache="/tmp/c d")
    line = c.exec_prefix_str(_spec(), gpus=1, binds=_binds(), cache="/tmp/c d")
    env = {**os.environ, "PATH": f"{standin.parent}:{os.environ['PATH']}"}
    subprocess.run(f"{line} python -u -m submitit.core._submit '/sub mit'", shell=True, check=True, env=env)
    got = record.read_text().splitlines()
    assert got == argv[1:] + [
        "python", "-u", "-m", "submitit.core._submit", "/sub mit"]


# ------------------------------------------------------------------------------ two bootstraps

def _renderings(**kw) -> tuple[str, str]:
    text = c.DEF_PATH.read_text()
    return (c.render(text, revision="abc123", **kw),
            c.render(text, revision="abc123", bootstrap="debootstrap",
                     mirror="http://mirror.example/debian", **kw))


def test_debootstrap_rendering_swaps_only_the_base():
    docker, deb = _renderings(pip_files=[".b/pip.conf", ".b/ca.crt"])
    assert c.compare_renderings(docker, deb) == []
    assert deb.startswith("Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: http://mirror.example/debian\n")
    assert "org.opencontainers.image.base.name debian:bookworm" in deb
    post = [line.strip() for line in c._section_body(deb, "post") if line.strip()]
    assert post[0] == "export PIP_CONFIG_FILE=/opt/medsam2-hpc/build/pip.conf"  # before any pip
    assert 'python3 -m pip install --no-cache-dir --break-system-packages "torch==2.14.1" torchvision' in post
    assert any("python-is-python3" in line for line in post)  # submitit runs `python`
    assert post[-1] == "rm -rf /opt/medsam2-hpc/build"  # the pip.conf and CA bundle leave no trace
    assert c._section_body(docker, "post")[1:-1] == [
        line for line in c._section_body(deb, "post")[1:-1] if line not in
        ["    " + x for x in c.debootstrap_post(c.parse().base_image)]]


def test_compare_renderings_names_what_drifted():
    docker, deb = _renderings()
    deb = deb.replace("export YOLO_OFFLINE=1", "export YOLO_OFFLINE=0")
    deb = deb.replace("org.opencontainers.image.version 0.1.0", "org.opencontainers.image.version 9")
    deb = deb.replace('        "pandas>=2.1" \\\n', "")
    problems = c.compare_renderings(docker, deb)
    assert "%environment differs between the docker and debootstrap renderings" in problems
    assert "%labels differ between the docker and debootstrap renderings" in problems
    assert "debootstrap rendering: %post does not install setup.cfg requirements pandas>=2.1" in problems


def test_render_rejects_a_bad_mirror_and_bootstrap():
    with pytest.raises(InputError, match="--mirror 'ftp://x'"):
        c.render(c.DEF_PATH.read_text(), revision="x", bootstrap="debootstrap", mirror="ftp://x")
    with pytest.raises(InputError, match="--bootstrap 'yum'"):
        c.render(c.DEF_PATH.read_text(), revision="x", bootstrap="yum")
    assert c.torch_version("pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime") == "2.14.1"


# ------------------------------------------------------------------------------ layers

def test_deps_and_package_layers_add_up_to_the_full_image():
    text = c.DEF_PATH.read_text()
    full = c.render(text, revision="abc123", bootstrap="debootstrap", mirror="http://mirror.example/debian")
    deps = c.render(text, revision="abc123", bootstrap="debootstrap", mirror="http://mirror.example/debian",
                    layer="deps")
    package = c.render(text, revision="abc123", layer="package", base="/images/deps.sif",
                       checkpoints=["checkpoints/sam2_hiera_tiny.pt"])
    assert [x for x in c._section_body(deps, "post") + c._section_body(package, "post") if x.strip()] == [
        x for x in c._section_body(full, "post") if x.strip()]  # the same %post, cut in two
    assert any(x.strip().startswith(c.REQUIRES_MARKER) for x in c._section_body(deps, "post"))
    assert "pip install --no-cache-dir --break-system-packages --no-deps /opt/medsam2-hpc" in package
    assert deps.startswith("Bootstrap: debootstrap\n")
    assert package.startswith("Bootstrap: localimage\nFrom: /images/deps.sif\n\n%")
    # the deps image has nothing of our package: no sources, no %test importing it, no runscript
    assert [x for x in c._section_body(deps, "files") if x.strip()] == []
    assert "%test" not in deps and "%runscript" not in deps and "MEDSAM2_GIT_SHA" not in deps
    assert f"    {c.DEPS_LABEL} {c.deps_key(text)}\n" in c.render(text, revision="x", layer="deps")
    # the package layer: every other section as the full image has it; base.name stays the base's
    for section in ("files", "environment", "test", "runscript", "help"):
        whole = c.render(text, revision="abc123", checkpoints=["checkpoints/sam2_hiera_tiny.pt"])
        wanted = c._section_body(whole, section)
        assert c._section_body(package, section) == wanted, section
    assert "org.opencontainers.image.base.name" not in package
    with pytest.raises(InputError, match="--base"):
        c.render(text, revision="x", layer="package")
    with pytest.raises(InputError, match="control characters"):
        c.render(text, revision="x", layer="package", base="/images/a b.sif")
    with pytest.raises(InputError, match="package layer:"):
        c.render(text.replace(c.PACKAGE_MARKER, "# our package"), revision="x", layer="deps")


def test_deps_key_follows_the_dependency_layer_only():
    text = c.DEF_PATH.read_text()
    key = c.deps_key(text)
    assert c.deps_key(text.replace("mkdir -p /opt/medsam2-hpc/checkpoints", "mkdir -p /opt/ckpt")) == key
    assert c.deps_key(text.replace("medsam2_hpc /opt/medsam2-hpc/medsam2_hpc", "x /opt/x")) == key
    assert c.deps_key(text.replace('"pandas>=2.1"', '"pandas>=2.2"')) != key
    assert c.deps_key(text.replace("export YOLO_OFFLINE=1", "export YOLO_OFFLINE=0")) != key


def test_build_on_a_base_checks_its_deps_label_with_standin_apptainer(
        tmp_path, standin_apptainer, monkeypatch, capsys):
    ctx = _repo_copy(tmp_path)
    definition = str(ctx / "containers" / "medsam2.def")
    base = _write(tmp_path / "deps.sif", "a deps image")
    build = ["container", "build", "--def", definition, "--out", str(tmp_path / "m.sif"), "--base", str(base)]
    monkeypatch.setenv("STANDIN_DEPS", "0123456789abcdef")  # built from other requirements
    assert main(build) == 2
    err = capsys.readouterr().err
    assert f"--base: {base} was not built with --deps-only from this definition's requirements" in err
    assert f"needed {c.deps_key(c.DEF_PATH.read_text())}" in err and err.count("\n") == 1
    assert not (standin_apptainer / "argv").exists()  # the build never ran
    monkeypatch.setenv("STANDIN_DEPS", c.deps_key(c.DEF_PATH.read_text()))
    assert main(build) == 0
    built = (standin_apptainer / "build.def").read_text()
    assert built.startswith(f"Bootstrap: localimage\nFrom: {base}\n")
    # without --out a deps image goes beside the image, never over it (jobs.yaml's container.image)
    assert main(["container", "build", "--def", definition, "--deps-only"]) == 0
    deps = ctx / "containers" / "medsam2-deps.sif"
    assert (standin_apptainer / "argv").read_text().splitlines()[1] == str(deps) and deps.is_file()
    assert not (ctx / "containers" / "medsam2.sif").exists()
    for args, message in ((["--base", str(tmp_path / "none.sif")], "does not exist; build it with"),
                          (["--base", str(base), "--bootstrap", "docker"], "--bootstrap: with --base"),
                          (["--deps-only", "--with-checkpoints"], "--with-checkpoints: checkpoints go into")):
        assert main(["container", "build", "--def", definition, "--out", str(tmp_path / "n.sif"), *args]) == 2
        assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------ --pip-config host

CONFIG_LIST = """\
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.index-url='https://mirror.example/simple'
global.find-links='/opt/wheels https://wheels.example/links'
user.index-url='https://ignored.example/simple'
:env:.index-url='https://alice:s3cret@pypi.corp.example/simple'
:env:.trusted-host='pypi.corp.example'
"""


def test_pip_config_keeps_urls_skips_local_paths_and_hides_credentials(tmp_path):
    values = pipconfig.parse_config_list(CONFIG_LIST)
    assert values["index-url"] == "https://alice:s3cret@pypi.corp.example/simple"  # env wins
    bundle = _write(tmp_path / "ca.pem", "---CERT---")
    pip = pipconfig.from_values({**values, "cert": str(bundle)})
    assert pip.ca_bundle == bundle and pip.has_credentials
    assert pip.settings["find-links"] == ("https://wheels.example/links",)
    assert pip.skipped == ("find-links=/opt/wheels (a local path, not visible inside the build)",)
    text = pip.describe()
    assert "s3cret" not in text and "alice" not in text and "https://***@pypi.corp.example/simple" in text
    conf = pip.pip_conf("/opt/medsam2-hpc/build/ca.crt").splitlines()
    assert conf[:2] == ["[global]", "cert = /opt/medsam2-hpc/build/ca.crt"]
    assert "index-url = https://alice:s3cret@pypi.corp.example/simple" in conf
    with pytest.raises(InputError, match="pip's cert /nope.pem is not a file"):
        pipconfig.from_values({"cert": "/nope.pem"})


def test_build_carries_host_pip_config_without_printing_it_with_standin_apptainer(
        tmp_path, standin_apptainer, monkeypatch, capsys):
    bundle = _write(tmp_path / "corp-ca.pem", "---CORP CA---")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "https://alice:s3cret@pypi.corp.example/simple")
    monkeypatch.setenv("PIP_CERT", str(bundle))
    _write(standin_apptainer.parent / "bin" / "apptainer", STANDIN.replace(
        'cp "${@: -1}"', 'cp -p .medsam2-build-*/pip.conf .medsam2-build-*/ca.crt "$RECORD"/; cp "${@: -1}"'),
        executable=True)
    ctx = _repo_copy(tmp_path)
    assert main(["container", "build", "--bootstrap", "debootstrap", "--mirror", "http://m.example/debian",
                 "--pip-config", "host", "--compression", "zstd", "--out", str(tmp_path / "m.sif"),
                 "--def", str(ctx / "containers" / "medsam2.def")]) == 0
    out = capsys.readouterr()
    assert "s3cret" not in out.out + out.err and "https://***@pypi.corp.example/simple" in out.out
    record = standin_apptainer
    assert (record / "ca.crt").read_text() == "---CORP CA---"
    conf = record / "pip.conf"
    assert "index-url = https://alice:s3cret@pypi.corp.example/simple" in conf.read_text()
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600  # credentials: owner-only while it exists
    built = (record / "build.def").read_text()
    assert "MirrorURL: http://m.example/debian" in built
    assert c._section_body(built, "files")[0].split()[1] == "/opt/medsam2-hpc/build/pip.conf"
    argv = (record / "argv").read_text().splitlines()
    assert argv[:4] == ["build", "--mksquashfs-args", "-comp zstd -Xcompression-level 3",
                        str(tmp_path / "m.sif")]
    assert not list(ctx.glob(".medsam2-build-*"))  # scratch files removed


def test_build_mirror_needs_debootstrap(tmp_path, standin_apptainer, capsys):
    ctx = _repo_copy(tmp_path)
    assert main(["container", "build", "--mirror", "http://m.example/debian",
                 "--out", str(tmp_path / "m.sif"), "--def", str(ctx / "containers" / "medsam2.def")]) == 2
    assert "--mirror: only used with --bootstrap debootstrap" in capsys.readouterr().err
    assert not (standin_apptainer / "argv").exists()
