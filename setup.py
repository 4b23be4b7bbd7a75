"""Build driver: setuptools hands every native target to CMake (one build definition).

CMakeLists.txt builds
  pyllmops._C     the torch-free C++ core (pybind11): BPE, CPU kernels. Always.
  pyllmops._cuda  the CUDA kernels (pybind11 + nvcc, torch-free: tensors cross as raw pointers
                  and the current stream as an integer). When nvcc is found, or PYLLMOPS_CUDA=1.
Environment: PYLLMOPS_CUDA=0/1 forces the CUDA target off/on; CMAKE_BUILD_TYPE (default Release);
PYLLMOPS_CUDA_ARCHS (default "80;90a"); PYLLMOPS_CUTLASS_INCLUDE: CUTLASS's include dir for the
Hopper W8A8 kernel (default: the installed nvidia-cutlass wheel's, if any; empty: build without it).
"""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _want_cuda() -> bool:
    flag = os.environ.get("PYLLMOPS_CUDA")
    if flag is not None:
        return flag == "1"
    if os.environ.get("CUDA_HOME") and Path(os.environ["CUDA_HOME"], "bin", "nvcc").exists():
        return True
    return shutil.which("nvcc") is not None


def _cutlass_include() -> str:
    """CUTLASS's include dir (cutlass/, cute/): PYLLMOPS_CUTLASS_INCLUDE, else the nvidia-cutlass
    wheel's (cutlass_library/source/include); "" when there is none."""
    path = os.environ.get("PYLLMOPS_CUTLASS_INCLUDE")
    if path is None:
        spec = importlib.util.find_spec("cutlass_library")
        path = str(Path(spec.origin).parent / "source" / "include") if spec and spec.origin else ""
    return path if path and Path(path, "cutlass", "cutlass.h").exists() else ""


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        target = ext.name.split(".")[-1]
        cfg = os.environ.get("CMAKE_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPYLLMOPS_CUDA={'ON' if target == '_cuda' else 'OFF'}",
        ]
        if target == "_cuda":
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ.get('PYLLMOPS_CUDA_ARCHS', '80;90a')}")
            args.append(f"-DPYLLMOPS_CUTLASS_INCLUDE={_cutlass_include()}")
            cuda_home = os.environ.get("CUDA_HOME")
            if cuda_home:
                args.append(f"-DCMAKE_CUDA_COMPILER={Path(cuda_home, 'bin', 'nvcc')}")
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", target, "-j", jobs], check=True)


ext_modules = [CMakeExtension("pyllmops._C")]
if _want_cuda():
    ext_modules.append(CMakeExtension("pyllmops._cuda"))

setup(
    packages=[
        "pyllmops", "pyllmops.ops", "pyllmops.quant", "pyllmops.quant.methods", "pyllmops.nn", "pyllmops.parallel",
        "pyllmops.tokenizer", "pyllmops.models", "pyllmops.commands", "pyllmops.kernels", "pyllmops.formats",
    ],
    # The Triton sources live in kernels/triton/ and install as pyllmops.kernels. The top-level
    # kernels/ has no __init__.py on purpose: run from the repository root, that folder is on
    # sys.path, and as a bare directory (a namespace portion) it never hides a regular package of
    # the same name (the PyPI `kernels`, which transformers imports), as a package would.
    package_dir={"pyllmops.kernels": "kernels/triton"},
    ext_modules=ext_modules,
    cmdclass={"build_ext": CMakeBuild},
)
