"""Build pyoptim's extension `pyoptim._C` (package metadata: pyproject.toml).

Environment:
  PYOPTIM_CUDA=auto|0|1   auto (default): build the CUDA kernels when nvcc is found (torch's
                          CUDA_HOME) and torch was built with CUDA; otherwise say why in one line
                          and build CPU-only. 1: the same, but an error if CUDA cannot be built.
                          0: CPU-only. Never asks for a GPU.
  TORCH_CUDA_ARCH_LIST    CUDA architectures (torch's variable). Unset: the visible GPUs' (torch's
                          default), or DEFAULT_ARCH when no GPU is visible.
  MAX_JOBS                parallel compile jobs (torch's ninja build; unset: ninja's default).
  DEBUG=1                 -O0 -g instead of -O3 with no debug info.

One ninja build compiles every source, so the CPU ISA kernels, the op layer and the CUDA files
compile in parallel. Only csrc/cpu/isa_*.cpp get ISA flags (csrc/README.md), and only the target
architecture's levels are compiled (ISA_LEVELS): scalar, avx2, avx512 on x86-64; scalar, neon on
AArch64; scalar elsewhere.
"""

import glob
import os
import shutil
import sys
import sysconfig

from setuptools import setup


def _cuda_home_behind_wrapper():
    # torch guesses CUDA_HOME as dirname(dirname(`which nvcc`)); an nvcc wrapper script such as
    # /usr/local/bin/nvcc (dev machines and CI here) makes that /usr/local, which has no toolkit.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    toolkit = "/usr/local/cuda"
    if (
        nvcc
        and not os.path.isfile(os.path.join(os.path.dirname(nvcc), "..", "include", "cuda.h"))
        and os.path.isfile(os.path.join(toolkit, "include", "cuda.h"))
    ):
        os.environ["CUDA_HOME"] = toolkit


_cuda_home_behind_wrapper()

# torch reads CUDA_HOME when cpp_extension is imported: after the fix-up above
import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("DEBUG", "0") == "1"
# No fast-math: -fno-math-errno only lets gcc emit sqrt as an instruction (it changes no result).
# -ffp-contract=off: no implicit FMA, so every ISA level and the GPU round identically.
# -g0 overrides the -g in Python's own CFLAGS, which setuptools puts first.
CXX_FLAGS = (["-O0", "-g"] if DEBUG else ["-O3", "-g0"]) + [
    "-fno-math-errno",
    "-ffp-contract=off",
    "-fdiagnostics-color=always",
]
# --fmad=false: no implicit FMA (as -ffp-contract=off). torch adds --expt-relaxed-constexpr.
# -compress-all: the device code is stored compressed, as torch stores its own.
NVCC_FLAGS = (["-O0", "-g"] if DEBUG else ["-O3"]) + [
    "-lineinfo",
    "--fmad=false",
    "-Xfatbin",
    "-compress-all",
]
# Every level's own flags. NEON (Advanced SIMD) is part of the AArch64 baseline: no flag.
ISA_FLAGS = {
    "scalar": [],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
    "neon": [],
}
# The levels of each target architecture (csrc/cpu/isa_dispatch.cpp picks among the same).
ARCH_LEVELS = {"x86_64": ("scalar", "avx2", "avx512"), "aarch64": ("scalar", "neon")}


def target_arch():
    """x86_64, aarch64, or the machine name: the platform the extension is built for
    (sysconfig's, which honours _PYTHON_HOST_PLATFORM in cross builds)."""
    machine = sysconfig.get_platform().rsplit("-", 1)[-1].lower()
    return {"amd64": "x86_64", "i686": "x86_64", "i386": "x86_64", "arm64": "aarch64"}.get(
        machine, machine
    )


ISA_LEVELS = ARCH_LEVELS.get(target_arch(), ("scalar",))
# Hidden, so no ISA-compiled symbol leaves _C.so (csrc/README.md rule 2).
ISA_COMMON = ["-fvisibility=hidden"]
# GCC 12's own avx512fintrin.h trips -Wmaybe-uninitialized (Python's CFLAGS carry -Wall) in every
# inlined _mm512_undefined_*() (GCC bug 105593): 1,582 warnings, all in that header, none in ours.
ISA_WARNINGS = {"avx512": ["-Wno-maybe-uninitialized"]}
# One compile that runs on every GPU from sm_80 up (PTX is JIT-compiled for newer ones).
DEFAULT_ARCH = "8.0+PTX"


def cuda_plan():
    """(build CUDA?, the one line that says why not)."""
    mode = os.environ.get("PYOPTIM_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise RuntimeError(f"PYOPTIM_CUDA must be auto, 0 or 1, not {mode!r}")
    if mode == "0":
        return False, None
    if torch.version.cuda is None:
        why = f"torch {torch.__version__} was built without CUDA"
    elif CUDA_HOME is None or not os.path.isfile(os.path.join(CUDA_HOME, "bin", "nvcc")):
        where = f"at {os.path.join(CUDA_HOME, 'bin', 'nvcc')}" if CUDA_HOME else "(no CUDA_HOME)"
        why = f"no nvcc {where}; set CUDA_HOME to a CUDA {torch.version.cuda} toolkit"
    else:
        return True, None
    if mode == "1":
        raise RuntimeError(f"PYOPTIM_CUDA=1 but the CUDA kernels cannot be built: {why}")
    return False, f"pyoptim: building CPU-only (PYOPTIM_CUDA=auto): {why}"


def nvidia_wheel_includes():
    # ATen's CUDA headers include cublas_v2.h and cusparse.h, which a bare toolkit (nvcc and
    # cudart only, as here) lacks; the nvidia-* wheels torch depends on ship them.
    if os.path.isfile(os.path.join(CUDA_HOME, "include", "cublas_v2.h")):
        return []
    try:
        import nvidia
    except ImportError:
        return []
    found = {
        os.path.dirname(h)
        for base in nvidia.__path__
        for h in glob.glob(os.path.join(base, "*", "include", "cublas_v2.h"))
    }
    return sorted(found)


def get_extensions():
    """([the extension], whether it has the CUDA kernels, the line that says why not)."""
    with_cuda, skipped = cuda_plan()
    # Every C++ file under csrc/ (and every .cu with CUDA), wherever new ones are added, less the
    # ISA levels of other architectures.
    levels = {s[len("csrc/cpu/isa_") : -len(".cpp")] for s in glob.glob("csrc/cpu/isa_*.cpp")}
    if levels - {"dispatch"} != set(ISA_FLAGS):
        raise RuntimeError(f"setup.py: ISA_FLAGS has {sorted(ISA_FLAGS)}, csrc/cpu has {levels}")
    other_arch = {f"csrc/cpu/isa_{level}.cpp" for level in set(ISA_FLAGS) - set(ISA_LEVELS)}
    sources = sorted(set(glob.glob("csrc/**/*.cpp", recursive=True)) - other_arch)
    cxx = list(CXX_FLAGS)
    link = []
    # torch's at::parallel_for is an OpenMP region compiled into our code when torch uses OpenMP.
    if "parallel backend: OpenMP" in torch.__config__.parallel_info():
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    if with_cuda:
        sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
        cxx.append("-DPYOPTIM_WITH_CUDA")  # ops/capability.cpp: torch.ops.pyoptim._built_with_cuda
        make = cpp_extension.CUDAExtension
        include_dirs += nvidia_wheel_includes()
    else:
        make = cpp_extension.CppExtension
    ext = make(
        "pyoptim._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx, "nvcc": list(NVCC_FLAGS)},
        extra_link_args=link,
    )
    return [ext], with_cuda, skipped


EXTENSIONS, WITH_CUDA, CUDA_SKIPPED = get_extensions()


class BuildExt(BuildExtension.with_options(use_ninja=True)):
    """torch's ninja build_ext, plus per-file flags for csrc/cpu/isa_*.cpp and the CUDA notes."""

    def build_extensions(self):
        if not self.use_ninja:  # torch's fallback compiles serially, with no per-file flags
            raise RuntimeError("pyoptim's build needs ninja: pip install ninja")
        if CUDA_SKIPPED:
            print(CUDA_SKIPPED, file=sys.stderr)
        # torch's default (the visible GPUs' architectures) fails when no GPU is visible.
        arch_unset = not os.environ.get("TORCH_CUDA_ARCH_LIST")
        if WITH_CUDA and arch_unset and torch.cuda.device_count() == 0:
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH
            print(
                f"pyoptim: no GPU visible, CUDA kernels for TORCH_CUDA_ARCH_LIST={DEFAULT_ARCH}",
                file=sys.stderr,
            )
        write_ninja = cpp_extension._write_ninja_file
        cpp_extension._write_ninja_file = _with_isa_flags(write_ninja)
        try:
            super().build_extensions()
        finally:
            cpp_extension._write_ninja_file = write_ninja


def _with_isa_flags(write_ninja):
    """torch writes one ninja file with one set of C++ flags for all sources. Give each
    csrc/cpu/isa_<level>.cpp of the target (ISA_LEVELS) its ISA flags as a per-file ninja
    binding, so the ISA kernels compile in the same parallel build as everything else (MAX_JOBS
    honoured) instead of before it."""

    def write(path, **kwargs):
        write_ninja(path, **kwargs)
        with open(path) as f:
            lines = f.read().splitlines()
        out, patched = [], set()
        for line in lines:
            out.append(line)
            for isa in ISA_LEVELS:
                flags = ISA_FLAGS[isa]
                src = os.path.join("csrc", "cpu", f"isa_{isa}.cpp")
                if line.startswith("build ") and line.endswith(" " + os.path.abspath(src)):
                    extra = ISA_COMMON + flags + ISA_WARNINGS.get(isa, [])
                    out.append("  post_cflags = $post_cflags " + " ".join(extra))
                    patched.add(isa)
        if patched != set(ISA_LEVELS):
            raise RuntimeError(f"setup.py: no ninja build line for isa_{set(ISA_LEVELS) - patched}")
        with open(path, "w") as f:
            f.write("\n".join(out) + "\n")

    return write


setup(
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": BuildExt},
)
