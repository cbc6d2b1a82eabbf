"""NVRTC as CuPy calls it, played by g++ on the host: the compile step of tests/fake_cupy.py.

CuPy (cupy/cuda/compiler.py) hands NVRTC the caller's ``options`` tuple and adds ``-ftz=true``;
NVRTC's own default is ``--fmad=true``. Both change float results, so the host build copies them:

- ``--fmad=true`` (unless the options say ``--fmad=false``): multiply-adds are contracted into
  fused multiply-adds, here with ``g++ -O2 -mfma -ffp-contract=fast`` (``-ffp-contract=off``
  when FMA is off). Which products g++ fuses need not be the ones NVRTC fuses, but a kernel
  whose results depend on contraction differs from its twin here too.
- ``-ftz=true``: float32 denormal inputs and results are flushed to zero. A kernel whose floating
  types are all float32 runs with the x86 FTZ and DAZ bits set (``ftz_scope`` below); float64
  is never flushed, as on the GPU.

Options are checked as NVRTC would: a tuple of strings (CuPy declares ``tuple options``), and an
option this emulation cannot model is refused rather than ignored. A compile error raises
:class:`CompileException` with g++'s log, as CuPy raises its own CompileException.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

_BUILD = Path(tempfile.mkdtemp(prefix="fake_nvrtc_"))
atexit.register(shutil.rmtree, _BUILD, ignore_errors=True)
_LIBRARIES: dict[str, ctypes.CDLL] = {}

# Sets MXCSR's FTZ (0x8000) and DAZ (0x0040) bits for its lifetime when ``on``; restores them after.
FTZ_SCOPE = """
#include <xmmintrin.h>
struct gpubp_ftz_scope {
    unsigned saved;
    explicit gpubp_ftz_scope(bool on) : saved(_mm_getcsr()) { if (on) _mm_setcsr(saved | 0x8040u); }
    ~gpubp_ftz_scope() { _mm_setcsr(saved); }
};
"""


class CompileException(Exception):
    """The kernel source did not compile (CuPy raises cupy.cuda.compiler.CompileException)."""


def fmad_enabled(options) -> bool:
    """Whether NVRTC would contract multiply-adds under ``options``; checks them on the way."""
    if not isinstance(options, tuple):
        raise TypeError(f"options must be a tuple of str, as CuPy declares it, not {type(options).__name__}")
    fmad = True  # NVRTC's default
    for option in options:
        if not isinstance(option, str):
            raise TypeError(f"compile option {option!r} is not a str")
        match = re.fullmatch(r"--?fmad=(true|false)", option)
        if match:
            fmad = match.group(1) == "true"
        elif not re.fullmatch(r"--?std=c\+\+(11|14|17|20)|-D\w+(=\S*)?", option):
            raise NotImplementedError(f"the host emulation of NVRTC does not model the option {option!r}")
    return fmad


def compile_library(source: str, options: tuple, std: str = "c++17") -> ctypes.CDLL:
    """Compile ``source`` with g++ as NVRTC would treat it under ``options``; memoized by content."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise NotImplementedError("the FMA and FTZ emulation needs an x86-64 host")
    flags = ["-mfma", "-ffp-contract=fast" if fmad_enabled(options) else "-ffp-contract=off"]
    flags += [o for o in options if o.startswith("-D")]
    cmd = ["g++", "-O2", f"-std={std}", "-pthread", "-shared", "-fPIC", "-Wall", "-Werror",
           "-Wno-unused-variable", *flags]
    key = hashlib.sha256((source + " ".join(cmd)).encode()).hexdigest()[:20]
    if key not in _LIBRARIES:
        cpp, lib = _BUILD / f"{key}.cpp", _BUILD / f"{key}.so"
        cpp.write_text(source)
        result = subprocess.run([*cmd, "-o", str(lib), str(cpp)], capture_output=True, text=True)
        if result.returncode != 0:
            raise CompileException(f"g++ (standing in for NVRTC) failed:\n{result.stderr}\n{source}")
        _LIBRARIES[key] = ctypes.CDLL(str(lib))
    return _LIBRARIES[key]
