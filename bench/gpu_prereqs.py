"""What bench/gpu_check.sh needs before it builds anything, checked in one go so a bare GPU box
(no network) says everything that is missing at once instead of failing halfway.

    python -m bench.gpu_prereqs [--gpu]     exit 0: all there; 1: something required is missing

Python packages are checked by importing them (a package that is present but broken counts as
missing); tools by finding the binary. --gpu adds what only a GPU run needs: a CUDA build of
torch that sees a device, and nvidia-smi. A missing package travels as a wheel: see
bench/gpu_wheels.sh.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
from pathlib import Path

# (import name, distribution to carry, why)
PACKAGES = [
    ("torch", "torch", "everything"),
    ("numpy", "numpy", "pyllmops runtime dependency"),
    ("tqdm", "tqdm", "pyllmops runtime dependency"),
    ("triton", "triton", "Triton kernels and the kernel report"),
    ("pybind11", "pybind11", "building pyllmops._C / pyllmops._cuda"),
    ("setuptools", "setuptools", "pip install -e . (no build isolation)"),
    ("pytest", "pytest", "the gpu tests"),
    ("pytest_timeout", "pytest-timeout", "pyproject's pytest timeout setting"),
    ("pytest_benchmark", "pytest-benchmark", "python -m bench"),
    ("safetensors", "safetensors", "checkpoint tests and pyllmops.models"),
]


def cuda_home() -> str | None:
    for d in (os.environ.get("CUDA_HOME"), "/usr/local/cuda", *sorted(Path("/usr/local").glob("cuda-*"))):
        if d and (Path(d) / "bin" / "nvcc").exists():
            return str(d)
    return None


def missing_packages() -> list[tuple[str, str, str]]:
    out = []
    for mod, dist, why in PACKAGES:
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 - a broken install is as missing as an absent one
            out.append((dist, why, f"{type(e).__name__}: {e}"))
    return out


def missing_tools(gpu: bool) -> list[tuple[str, str, str]]:
    out = []
    if cuda_home() is None:
        out.append(("nvcc", "building the CUDA kernels", "not in $CUDA_HOME/bin, /usr/local/cuda*/bin"))
    if shutil.which("cmake") is None:
        try:
            importlib.import_module("cmake")
        except ImportError:
            out.append(("cmake", "building the C++ extensions", "no cmake binary or cmake package"))
    if shutil.which("ninja") is None:
        try:
            importlib.import_module("ninja")
        except ImportError:
            out.append(("ninja", "CMake generator", "no ninja binary or ninja package"))
    if gpu:
        if shutil.which("nvidia-smi") is None:
            out.append(("nvidia-smi", "reporting the card", "not on PATH"))
        try:
            import torch

            if not torch.cuda.is_available():
                out.append(("torch with CUDA", "the gpu tests", f"torch {torch.__version__} sees no CUDA device"))
        except ImportError:
            pass  # already reported as a missing package
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_prereqs", description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="also require a CUDA device and nvidia-smi")
    args = p.parse_args(argv)
    pkgs, tools = missing_packages(), missing_tools(args.gpu)
    for dist, why, detail in pkgs:
        print(f"MISSING package {dist:18s} needed for {why} ({detail})")
    for name, why, detail in tools:
        print(f"MISSING tool    {name:18s} needed for {why} ({detail})")
    if pkgs:
        names = " ".join(d for d, _, _ in pkgs)
        print(f"  carry the packages as wheels: here, `bash bench/gpu_wheels.sh {names}`, then name .whl in the "
              "device run's carry (bench/gpu_check.sh installs .whl/*.whl first)")
    if not pkgs and not tools:
        print(f"prerequisites: all present (python {sys.version.split()[0]}, CUDA_HOME={cuda_home()})")
    return 1 if pkgs or tools else 0


if __name__ == "__main__":
    sys.exit(main())
