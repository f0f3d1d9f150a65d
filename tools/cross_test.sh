#!/usr/bin/env bash
# The AArch64 NEON kernels against the scalar ones, bit for bit, on any machine: cross-compiles
# the torch-free kernel libraries (csrc/cpu/isa_scalar.cpp, isa_neon.cpp, isa_dispatch.cpp) and
# tests/cross/neon_vs_scalar.cpp with aarch64-linux-gnu-g++, statically linked, and runs the
# driver under qemu-aarch64. `make test-cross` runs it.
#
# Needs: aarch64-linux-gnu-g++ and qemu-aarch64 (Debian / Ubuntu:
#   apt-get install g++-aarch64-linux-gnu qemu-user). Exit status 2 when either is missing.
# Environment: CROSS_CXX, QEMU (the tools), CROSS_BUILD (object and binary folder,
# default build/cross).
set -euo pipefail
cd "$(dirname "$0")/.."

CXX="${CROSS_CXX:-aarch64-linux-gnu-g++}"
QEMU="${QEMU:-qemu-aarch64}"
OUT="${CROSS_BUILD:-build/cross}"
for tool in "$CXX" "$QEMU"; do
  if ! command -v "$tool" >/dev/null; then
    echo "cross_test.sh: $tool not found (apt-get install g++-aarch64-linux-gnu qemu-user)" >&2
    exit 2
  fi
done

# The extension's code-generation flags (setup.py's CXX_FLAGS of a release build, torch's
# -std=c++20): no implicit FMA, sqrt as an instruction; the ISA files also get setup.py's
# ISA_COMMON. NEON needs no flag on AArch64.
FLAGS=(-std=c++20 -O3 -fno-math-errno -ffp-contract=off -Wall -Werror -Icsrc/include -Icsrc)
ISA=(-fvisibility=hidden)

mkdir -p "$OUT"
compile() {  # source object [flags...]
  local src=$1 obj=$2
  shift 2
  echo "  $CXX -c $src"
  nice -n 10 "$CXX" "${FLAGS[@]}" "$@" -c "$src" -o "$OUT/$obj"
}
echo "cross-compiling for aarch64 ($("$CXX" -dumpfullversion)):"
compile csrc/cpu/isa_scalar.cpp isa_scalar.o "${ISA[@]}"
compile csrc/cpu/isa_neon.cpp isa_neon.o "${ISA[@]}"
compile csrc/cpu/isa_dispatch.cpp isa_dispatch.o
compile tests/cross/neon_vs_scalar.cpp neon_vs_scalar.o
"$CXX" -static -o "$OUT/neon_vs_scalar" "$OUT"/{neon_vs_scalar,isa_scalar,isa_neon,isa_dispatch}.o

run() {  # the driver under qemu, with PYOPTIM_CPU_CAPABILITY=$1 when set
  env ${1:+PYOPTIM_CPU_CAPABILITY=$1} "$QEMU" "$OUT/neon_vs_scalar" "${@:2}"
}
echo "running under $QEMU ($("$QEMU" --version | head -1)):"
run ""
# PYOPTIM_CPU_CAPABILITY caps the level chosen at load time; another architecture's level is
# ignored with a message.
run scalar --dispatch=scalar
run neon --dispatch=neon
run avx2 --dispatch=neon
