"""Checks that the llama.cpp in this Python environment is the portable x86-64-v3 build
(`LLAMA_CMAKE_ARGS` in the Makefile, as in the inference image), not one built for the build
machine's own CPU: ggml's AMX kernels, which a native build on a Sapphire Rapids CPU enables,
crash on the first decode of the project's Q4_K_M model (docs/adr/0036).

    .venv/bin/python scripts/llama_build.py     # exit 1: a native build, to be rebuilt
"""

from __future__ import annotations

import sys

# Kernels that only a native build (or an explicit AVX-512/AMX build) compiles in.
NOT_PORTABLE = ("AMX_INT8 = 1", "AVX512 = 1")


def main() -> int:
    try:
        import llama_cpp
    except ImportError as exc:
        print(f"llama_cpp is not installed in {sys.prefix}: {exc}", file=sys.stderr)
        return 1
    info = llama_cpp.llama_print_system_info().decode()
    found = [flag.split(" =")[0] for flag in NOT_PORTABLE if flag in info]
    if found:
        print(
            f"llama-cpp-python in {sys.prefix} was built for this machine's CPU ({', '.join(found)} compiled in), "
            "not with the Makefile's LLAMA_CMAKE_ARGS: rebuild it",
            file=sys.stderr,
        )
        return 1
    print(f"llama.cpp build: {info.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
