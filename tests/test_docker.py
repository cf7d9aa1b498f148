"""Static checks of docker/Dockerfile.cpu and docker/Dockerfile.gpu (no docker engine here, so nothing is built).

They catch what breaks a build or an image without building it: base images,
the entrypoint, the extras installed versus pyproject.toml, the files copied
versus the package layout, the Python version, and the build context.
"""

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMAGES = {"cpu": ROOT / "docker" / "Dockerfile.cpu", "gpu": ROOT / "docker" / "Dockerfile.gpu"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, f"{path}: the last instruction ends with a line continuation"
    result = []
    for text in logical:
        word, _, rest = text.strip().partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def one(path: Path, name: str) -> str:
    found = [args for instr, args in instructions(path) if instr == name]
    assert len(found) == 1, f"{path.name}: expected one {name}, found {len(found)}"
    return found[0]


def pip_targets(path: Path) -> list[str]:
    """What the ``pip install`` commands of RUN instructions install (their non-option arguments)."""
    targets = []
    for instr, args in instructions(path):
        if instr != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or words[1:4] == ["-m", "pip", "install"]:
                targets += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return targets


def test_base_images_are_pinned_and_match_the_cuda_of_the_gpu_extra():
    assert one(IMAGES["cpu"], "FROM") == "python:3.11-slim"
    gpu_base = one(IMAGES["gpu"], "FROM")
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-runtime-ubuntu(\d+\.\d+)", gpu_base)
    assert match, f"GPU base image {gpu_base!r}: expected a pinned nvidia/cuda runtime tag"
    cuda_major = match.group(1)
    gpu_extra = PYPROJECT["project"]["optional-dependencies"]["gpu"]
    assert any(req.startswith(f"cupy-cuda{cuda_major}x") for req in gpu_extra), gpu_extra
    assert any(req.startswith(f"dask-cuda[cu{cuda_major}]") for req in gpu_extra), gpu_extra


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_entrypoint_is_rhapso_gpu(image):
    assert "rhapso-gpu" in PYPROJECT["project"]["scripts"]
    assert json.loads(one(IMAGES[image], "ENTRYPOINT")) == ["rhapso-gpu"]  # exec form: signals reach it
    assert json.loads(one(IMAGES[image], "CMD")) == ["--help"]
    workdirs = [args for instr, args in instructions(IMAGES[image]) if instr == "WORKDIR"]
    assert workdirs[-1] == "/data"  # relative paths in `docker run ... align dataset.xml` are in the mount


@pytest.mark.parametrize("image,extras", [("cpu", set()), ("gpu", {"gpu"})])
def test_the_package_is_installed_with_extras_that_pyproject_defines(image, extras):
    targets = pip_targets(IMAGES[image])
    assert len(targets) == 1, targets
    name, _, rest = targets[0].partition("[")
    assert name == "."  # the copied source tree, not a release from PyPI
    installed = set(filter(None, rest.rstrip("]").split(","))) if rest else set()
    assert installed == extras
    assert installed <= set(PYPROJECT["project"]["optional-dependencies"])


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_everything_the_package_needs_is_copied_before_the_install(image):
    steps = instructions(IMAGES[image])
    install = next(i for i, (instr, args) in enumerate(steps) if instr == "RUN" and "pip install" in args)
    copied = set()
    for instr, args in steps[:install]:
        if instr == "COPY":
            *sources, _ = shlex.split(args)
            copied |= set(sources)
    for source in copied:
        assert (ROOT / source).exists(), f"{image}: COPY {source}: no such file in the repository"
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"{image}: packages not copied: {packages - copied}"
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied


def test_python_versions_satisfy_requires_python():
    minimum = tuple(int(v) for v in re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"]).groups())
    cpu = re.fullmatch(r"python:(\d+)\.(\d+)-slim", one(IMAGES["cpu"], "FROM")).groups()
    assert tuple(map(int, cpu)) >= minimum
    gpu_text = IMAGES["gpu"].read_text()
    versions = set(re.findall(r"python(\d+)\.(\d+)", gpu_text))
    assert len(versions) == 1, f"the GPU image names several Pythons: {versions}"
    assert tuple(map(int, versions.pop())) >= minimum
    assert "-m venv /opt/venv" in gpu_text and "ENV PATH=/opt/venv/bin:$PATH" in gpu_text


def _ignored(patterns: list[str], name: str) -> bool:
    """Whether a top-level ``name`` of the build context is left out (dockerignore: the last match wins)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if fnmatch.fnmatch(name, pattern.lstrip("!").rstrip("/")):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_build_context_holds_only_what_is_copied(image):
    ignore = IMAGES[image].with_name(IMAGES[image].name + ".dockerignore")
    patterns = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    copied = {s for instr, args in instructions(IMAGES[image]) if instr == "COPY" for s in shlex.split(args)[:-1]}
    for source in copied:
        assert not _ignored(patterns, source), f"{ignore.name} leaves out {source}, which the image copies"
    for heavy in (".venv", ".git", "tests", "demo_out", "bench"):
        assert _ignored(patterns, heavy), f"{ignore.name} sends {heavy} to the docker daemon"


def test_readme_shows_the_images_in_use():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Docker"):]
    assert re.search(r'docker run --rm --gpus all -v "?\S+:/data"? rhapso-gpu:gpu align /data/dataset\.xml', section)
    for image in IMAGES.values():
        assert f"docker build -f docker/{image.name}" in section
