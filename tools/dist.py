"""`make dist`: build the sdist and wheel, and prove both work away from this checkout.

1. The sdist carries every file of csrc/ (each header included) and the package's own files.
2. In a fresh venv holding only torch and the build tools, `python -m build --no-isolation`
   builds the sdist, then the wheel from the unpacked sdist: the sdist builds from scratch.
3. In another fresh venv, `pip install <wheel>` (torch comes from the wheel's dependencies) and
   tools/smoke.py runs from an empty directory, so it can only import the installed copy.

Usage: python tools/dist.py [--torch 'torch==2.14.1'] [--outdir dist]. The build follows the
environment as any build does (PYOPTIM_CUDA, TORCH_CUDA_ARCH_LIST, MAX_JOBS, DEBUG).
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*cmd, cwd=None):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def fresh_venv(where, *packages):
    run(sys.executable, "-m", "venv", where)
    py = os.path.join(where, "bin", "python")
    if packages:
        run(py, "-m", "pip", "install", "-q", *packages)
    return py


def expected_sdist_files():
    """Every file the build reads: all of csrc/ as it is on disk, plus the package."""
    files = {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "pyoptim/py.typed"}
    files |= {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "pyoptim", "*.py"))}
    for top, dirs, names in os.walk(os.path.join(ROOT, "csrc")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        files |= {os.path.relpath(os.path.join(top, n), ROOT) for n in names}
    return files


def check_sdist(sdist):
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    prefix = names[0].split("/")[0] + "/"
    have = {n[len(prefix) :] for n in names if n.startswith(prefix)}
    missing = sorted(expected_sdist_files() - have)
    if missing:
        sys.exit(f"dist: the sdist lacks {len(missing)} file(s) the build needs: {missing}")
    print(f"dist: {os.path.basename(sdist)} carries all {len(expected_sdist_files())} files")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--torch", default="torch==2.14.1", help="torch requirement for the venvs")
    ap.add_argument("--outdir", default=os.path.join(ROOT, "dist"))
    args = ap.parse_args()
    shutil.rmtree(args.outdir, ignore_errors=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="pyoptim-dist-") as tmp:
        build_py = fresh_venv(
            os.path.join(tmp, "build-venv"), args.torch, "setuptools>=77", "wheel", "ninja", "build"
        )
        run(build_py, "-m", "build", "--no-isolation", "--outdir", args.outdir, ROOT)
        (sdist,) = glob.glob(os.path.join(args.outdir, "pyoptim-*.tar.gz"))
        (wheel,) = glob.glob(os.path.join(args.outdir, "pyoptim-*.whl"))
        check_sdist(sdist)

        smoke_py = fresh_venv(os.path.join(tmp, "smoke-venv"))
        run(smoke_py, "-m", "pip", "install", "-q", wheel, args.torch)
        away = os.path.join(tmp, "elsewhere")
        os.mkdir(away)
        smoke = os.path.join(away, "smoke.py")
        shutil.copy(os.path.join(ROOT, "tools", "smoke.py"), smoke)
        run(smoke_py, smoke, cwd=away)
    sizes = ", ".join(f"{os.path.basename(f)} {os.path.getsize(f) / 1e6:.1f} MB"
                      for f in (sdist, wheel))
    print(f"dist: {sizes}: OK ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
