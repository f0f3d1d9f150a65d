"""Build pyoptim's extension `pyoptim._C`.

Environment:
  PYOPTIM_CUDA=auto|0|1   auto (default): build the CUDA kernels when CUDA_HOME is found and
                          torch was built with CUDA (torch.version.cuda). Never asks for a GPU.
  TORCH_CUDA_ARCH_LIST    CUDA architectures (default "8.0;9.0").
  DEBUG=1                 -O0 -g instead of -O3.

The CPU kernels (csrc/cpu/isa_*.cpp) are torch-free and compiled once per ISA level as static
libraries with their own flags (build_clib); nothing else gets ISA flags. See csrc/README.md.
"""

import glob
import os
import re
import subprocess

from setuptools import setup


def _default_cuda_home():
    """torch's cpp_extension looks at CUDA_HOME / CUDA_PATH, then `which nvcc`, then /usr/local/cuda.
    A wrapper script at /usr/local/bin/nvcc makes it pick /usr/local, which has no CUDA headers;
    so when neither variable is set, prefer a toolkit that has both nvcc and cuda_runtime.h."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    for home in ("/usr/local/cuda",):
        if os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isfile(
            os.path.join(home, "include", "cuda_runtime.h")
        ):
            os.environ["CUDA_HOME"] = home
            return


_default_cuda_home()

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("DEBUG", "0") == "1"
OPT = ["-O0", "-g"] if DEBUG else ["-O3"]
INCLUDE = os.path.join(ROOT, "csrc", "include")

# No fast-math: -fno-math-errno only lets gcc emit sqrt as an instruction (it changes no result).
# -ffp-contract=off: no implicit FMA, so every ISA level and the GPU round identically.
COMMON = OPT + ["-fno-math-errno", "-ffp-contract=off", "-fdiagnostics-color=always"]

ISA_FLAGS = {
    "scalar": [],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
}


def isa_libraries():
    return [
        (
            f"pyoptim_isa_{isa}",
            {
                "sources": [f"csrc/cpu/isa_{isa}.cpp"],
                "include_dirs": [INCLUDE, os.path.join(ROOT, "csrc")],
                "cflags": ["-std=c++17", "-fPIC", "-fvisibility=hidden"] + COMMON + flags,
            },
        )
        for isa, flags in ISA_FLAGS.items()
    ]


def want_cuda():
    mode = os.environ.get("PYOPTIM_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise RuntimeError(f"PYOPTIM_CUDA must be auto, 0 or 1, not {mode!r}")
    if mode == "0":
        return False
    import torch

    have = CUDA_HOME is not None and torch.version.cuda is not None
    if mode == "1" and not have:
        raise RuntimeError(
            "PYOPTIM_CUDA=1 but CUDA cannot be built: "
            f"CUDA_HOME={CUDA_HOME}, torch.version.cuda={torch.version.cuda}"
        )
    return have and bool(glob.glob(os.path.join(ROOT, "csrc", "ops", "*.cu")))


def check_nvcc_matches_torch():
    import torch

    out = subprocess.check_output([os.path.join(CUDA_HOME, "bin", "nvcc"), "--version"], text=True)
    m = re.search(r"release (\d+)\.(\d+)", out)
    nvcc_major = int(m.group(1)) if m else None
    torch_major = int(torch.version.cuda.split(".")[0])
    if nvcc_major != torch_major:
        raise RuntimeError(
            f"nvcc at {CUDA_HOME} is CUDA {m.group(0) if m else '?'} but torch was built with CUDA "
            f"{torch.version.cuda}; their major versions must match. Point CUDA_HOME at a matching "
            "toolkit or build without CUDA (PYOPTIM_CUDA=0)."
        )


def cuda_include_dirs():
    """ATen's CUDA headers include cublas_v2.h / cusparse.h, shipped in the nvidia wheels."""
    dirs = []
    try:
        import nvidia

        for base in nvidia.__path__:
            dirs += sorted(glob.glob(os.path.join(base, "cu*", "include")))
            dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
    except ImportError:
        pass
    return dirs


def get_extensions():
    sources = (
        sorted(glob.glob("csrc/ops/*.cpp"))
        + sorted(glob.glob("csrc/python/*.cpp"))
        + ["csrc/cpu/isa_dispatch.cpp"]
    )
    cxx = ["-fopenmp"] + COMMON  # torch adds its own -std (C++20 for torch 2.14)
    include_dirs = [INCLUDE, os.path.join(ROOT, "csrc")]
    libs = [name for name, _ in isa_libraries()]
    if want_cuda():
        check_nvcc_matches_torch()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += sorted(glob.glob("csrc/ops/*.cu"))
        nvcc = OPT + ["-lineinfo", "--fmad=false", "--expt-relaxed-constexpr"]
        return [
            CUDAExtension(
                "pyoptim._C",
                sources,
                include_dirs=include_dirs + cuda_include_dirs(),
                libraries=libs,
                extra_compile_args={"cxx": cxx + ["-DPYOPTIM_WITH_CUDA"], "nvcc": nvcc},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        CppExtension(
            "pyoptim._C",
            sources,
            include_dirs=include_dirs,
            libraries=libs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ]


class BuildExt(BuildExtension.with_options(use_ninja=True)):
    """build_ext that first builds the ISA libraries (plain `build_ext --inplace` skips build_clib)."""

    def run(self):
        self.run_command("build_clib")
        super().run()


setup(
    name="pyoptim",
    version="0.1.0",
    description="Fused, multithreaded CPU and CUDA drop-in replacements for torch.optim",
    packages=["pyoptim"],
    libraries=isa_libraries(),
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExt},
    python_requires=">=3.9",
    install_requires=["torch"],
)
