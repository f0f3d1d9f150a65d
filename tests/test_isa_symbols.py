"""Nothing compiled with ISA flags leaks (csrc/README.md, rule 2).

Each csrc/cpu/isa_<level>.cpp of this build is compiled unoptimized (DEBUG=1's -O0, where the
compiler inlines only what it must) with the level's flags from setup.py, and every symbol the
object defines for the linker must be in the level's namespace `pyoptim::cpu::<level>`. A symbol
outside it (an inline library function such as std::floor(float) called from a kernel) is
emitted by every level's object, and the linker keeps one copy for all of them: the scalar level
may then run AVX-512 code.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess

import pytest

from pyoptim._ops import CPU_LEVELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = os.environ.get("CXX", "g++")
TOOLS = (shutil.which(CXX), shutil.which("nm"))
# what the C++ runtime defines in any object that may throw, not code of ours
RUNTIME = {"DW.ref.__gxx_personality_v0"}


def _setup_constant(name: str):
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"setup.py has no {name}")


@pytest.mark.skipif(None in TOOLS, reason=f"needs {CXX} and nm")
@pytest.mark.parametrize("level", CPU_LEVELS)
def test_isa_object_defines_only_its_namespace(level, tmp_path):
    obj = tmp_path / f"isa_{level}.o"
    flags = _setup_constant("ISA_FLAGS")[level] + _setup_constant("ISA_COMMON")
    subprocess.run([CXX, "-std=c++20", "-O0", "-fno-math-errno", "-ffp-contract=off", *flags,
                    "-I" + os.path.join(ROOT, "csrc", "include"), "-I" + os.path.join(ROOT, "csrc"),
                    "-c", os.path.join(ROOT, "csrc", "cpu", f"isa_{level}.cpp"), "-o", str(obj)],
                   check=True)
    out = subprocess.run(["nm", "-C", "--defined-only", "--extern-only", str(obj)], check=True,
                         capture_output=True, text=True).stdout
    names = [line.split(" ", 2)[2] for line in out.splitlines() if line.count(" ") >= 2]
    assert names, "the object defines nothing: nm's output changed?"
    leaked = [n for n in names
              if not n.startswith(f"pyoptim::cpu::{level}::") and n not in RUNTIME]
    assert not leaked, f"isa_{level}.cpp defines symbols outside pyoptim::cpu::{level}: {leaked}"
