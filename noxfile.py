"""Developer tasks. `nox -s tests` runs each package's tests in its own environment, with only
that package and its declared dependencies installed, so an undeclared import fails here."""

from __future__ import annotations

import os
import subprocess
import sys

import nox


def _pip_find_links() -> str:
    """The wheel folders pip is configured to look in (where this machine keeps its CPU torch).
    uv does not read pip's configuration, so nox's uv backend is given them explicitly."""
    if os.environ.get("PIP_FIND_LINKS"):
        return os.environ["PIP_FIND_LINKS"]
    found = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() if found.returncode == 0 else ""


# uv creates and fills each environment in seconds where pip takes most of a minute; without uv
# installed (`./dev` installs it), nox falls back to venv and pip.
nox.options.default_venv_backend = "uv|venv"
if _pip_find_links():
    os.environ.setdefault("UV_FIND_LINKS", _pip_find_links())
nox.options.sessions = ["lint", "tests"]

TORCH = "torch==2.13.0"  # the CPU build that pip finds locally; a bare `torch` would pull a CUDA build
PACKAGES = {
    "ralu-core": ["packages/ralu-core"],
    "ralu-flux": ["packages/ralu-core", "packages/ralu-flux"],
    "ralu-sd3": ["packages/ralu-core", "packages/ralu-sd3"],
    "ralu-lumina": ["packages/ralu-core", "packages/ralu-lumina"],
    "ralu-qwenimage": ["packages/ralu-core", "packages/ralu-qwenimage"],
    "ralu-flux2": ["packages/ralu-core", "packages/ralu-flux2"],
    "ralu-bench": [
        "packages/ralu-core",
        "packages/ralu-flux",
        "packages/ralu-sd3",
        "packages/ralu-caching",
        "packages/ralu-lumina",
        "packages/ralu-qwenimage",
        "packages/ralu-flux2",
        "packages/ralu-bench",
    ],
    # Its tests run the caches on FLUX, SD3, Lumina and Qwen-Image pipelines, so the adapters are test dependencies.
    "ralu-caching": [
        "packages/ralu-core",
        "packages/ralu-caching",
        "packages/ralu-flux",
        "packages/ralu-sd3",
        "packages/ralu-lumina",
        "packages/ralu-qwenimage",
        "packages/ralu-flux2",
    ],
}
TEST_DIRS = {package: f"tests/{package.replace('-', '_')}" for package in PACKAGES}
# What users load on top of a pipeline, which the adapters' tests load too: LoRAs (PEFT), torchao's quantized
# weights and GGUF checkpoints (docs/compatibility.md).
USER_STACK = ["peft", "torchao", "gguf"]
TEST_EXTRAS = {
    package: USER_STACK
    for package in ("ralu-flux", "ralu-sd3", "ralu-lumina", "ralu-qwenimage", "ralu-flux2", "ralu-caching")
}
EVERYTHING = [
    "packages/ralu-core",
    "packages/ralu-flux",
    "packages/ralu-sd3",
    "packages/ralu-bench",
    "packages/ralu-caching",
    "packages/ralu-lumina",
    "packages/ralu-qwenimage",
    "packages/ralu-flux2",
]


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "packages", "tests", "docs/examples", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "packages", "tests", "docs/examples", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install(TORCH, "mypy", "types-PyYAML", "pytest", *USER_STACK, *[f"-e{p}" for p in EVERYTHING])
    session.run("mypy")


@nox.session
@nox.parametrize("package", list(PACKAGES))
def tests(session: nox.Session, package: str) -> None:
    extras = TEST_EXTRAS.get(package, [])
    session.install(TORCH, "pytest", "hypothesis", *extras, *[f"-e{p}" for p in PACKAGES[package]])
    session.run("pytest", TEST_DIRS[package], *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session
def build(session: nox.Session) -> None:
    session.install("build")
    for package in PACKAGES:
        session.run("python", "-m", "build", "--outdir", "dist", f"packages/{package}")
