"""The CPU backend's compiled kernels: ``kernels/host_kernels.c`` (the optimizer updates, ReLU's
bias + activation, BP2 with BP3, BP1's softmax-minus-y), built with the machine's C compiler on
first use and loaded with ctypes.

Why compiled: NumPy runs an update as a dozen array operations, each a pass over the parameters;
the C loop makes one. Over the 784-512-512-10 network's 670,000 float32 parameters on the
project's 2-core Xeon, Adam's update took 0.60 ms against NumPy's 1.87 ms, momentum's 0.43
against 0.65 ms (medians of 50): most of the gap between a training step and its products.
ReLU's z + b then max(., 0) is one pass instead of two (0.042 against 0.074 ms on 256 x 512), and
BP2's g * (a > 0) with the bias gradient's column sums one instead of three (0.042 against 0.070
ms, medians of 2000).

The build, like CuPy's of its CUDA kernels, happens once per machine and source: the compiler is
``$CC`` if set, else the first of cc, gcc and clang on PATH; flags :data:`FLAGS` (no FMA
contraction, no fast-math: the results are the NumPy twins', tests/test_host_kernels.py; no
trapping math, so that BP2's masked product vectorizes) and :data:`TUNING` (the vector
instructions of the CPU it runs on, as NumPy's own loops use them), or FLAGS alone where the
compiler refuses TUNING.
The library is cached in ``$GPUBP_CACHE_DIR``, else ``$XDG_CACHE_HOME/gpubp``, else
``~/.cache/gpubp``, under a name hashed from the source, the compiler, the flags and the
architecture, and for a TUNING build the CPU's model and instruction sets (so a cache shared by
other machines keeps one library for each; where the instruction sets cannot be read, as off
Linux, the build is portable); it is written to a temporary file and renamed, so ranks building at
once never load a partial file. A compiler that refuses TUNING is remembered in the cache (a
``.refused`` file beside the name of the tuned library) once the portable build has worked, so
later processes do not try it again. Where no compiler works (or the cache is not writable),
:func:`compiled_kernels` says why, the CPU backend runs the NumPy twins, and ``gpubp info`` shows
which.
``GPUBP_HOST_KERNELS=numpy`` asks for the twins (read on the first call of a process;
``compiled_kernels.cache_clear()`` reads it again).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from .kernels import source_dir

SOURCE = "host_kernels.c"
FLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
TUNING = ("-march=native",)  # left out where the compiler refuses it or the CPU cannot be named


def compiler() -> str | None:
    """Path of the C compiler to use: $CC, else cc, gcc or clang on PATH; None when there is none."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"].split()[0])
    return next((path for path in map(shutil.which, ("cc", "gcc", "clang")) if path), None)


def instruction_sets() -> str | None:
    """What names this CPU's instruction sets, for the key of a library built with TUNING: the model
    and flag lines of /proc/cpuinfo (x86 "flags", arm64 "Features", s390x "features", RISC-V
    "isa"); None where there is no such line (not Linux), and the kernels are then built portable."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = sorted({line for line in f if line.startswith(("model name", "flags", "Features", "features", "isa"))})
    except OSError:
        return None
    return "".join(lines) if any(not line.startswith("model name") for line in lines) else None


def cache_dir() -> Path:
    """Where built libraries are kept: $GPUBP_CACHE_DIR, $XDG_CACHE_HOME/gpubp or ~/.cache/gpubp."""
    if os.environ.get("GPUBP_CACHE_DIR"):
        return Path(os.environ["GPUBP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpubp"


def build(cc: str, source: Path, target: Path, flags: tuple[str, ...] = FLAGS) -> None:
    """Compile ``source`` with ``flags`` into the shared library ``target``, atomically;
    RuntimeError with the compiler's message when it fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *flags, str(source), "-lm", "-o", partial], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _declare(library: ctypes.CDLL) -> None:
    """Argument types of every kernel of ``library``: pointers, sizes, scalars of T.
    (Attributes, not ``library[name]``: ctypes keeps the former, so the types stay set.)"""
    pointer, size = ctypes.c_void_p, ctypes.c_size_t
    for dtype, T in (("float32", ctypes.c_float), ("float64", ctypes.c_double)):
        arguments = {"sgd_momentum": [pointer] * 3 + [size, T, T, ctypes.c_int, T, size],
                     "adam": [pointer] * 4 + [size] + [T] * 7 + [size],
                     "bias_relu": [pointer] * 2 + [size] * 2,
                     "backprop_delta": [pointer] * 3 + [size] * 2 + [ctypes.c_int],
                     "softmax_shift": [pointer] * 5 + [size] * 2,
                     "softmax_row_sums": [pointer] * 2 + [size] * 2,
                     "softmax_finish": [pointer] * 6 + [T] + [size] * 2}
        for name, types in arguments.items():
            function = getattr(library, f"{name}_{dtype}")
            function.argtypes = types
            function.restype = ctypes.c_int if name == "softmax_shift" else None  # (1: a label out of range)


@functools.lru_cache(maxsize=None)
def compiled_kernels() -> tuple[ctypes.CDLL | None, str]:
    """(library, how it was built), or (None, why there is none): the kernels of
    ``kernels/host_kernels.c`` as ``{sgd_momentum,adam,bias_relu,backprop_delta,softmax_*}_{float32,float64}``,
    built and cached on first call (see the module's docstring)."""
    if os.environ.get("GPUBP_HOST_KERNELS") == "numpy":
        return None, "GPUBP_HOST_KERNELS=numpy"
    cc = compiler()
    if cc is None:
        return None, "no C compiler (set CC, or install cc, gcc or clang)"
    source = source_dir() / SOURCE
    cpu = instruction_sets()
    builds = ([(FLAGS + TUNING, cpu)] if cpu else []) + [(FLAGS, "")]  # tuned for this CPU, else portable
    failure, tuned_failed = None, None
    for flags, cpu_key in builds:
        # a cache shared by machines of other architectures or CPUs (an NFS home) keeps one library for each
        key = hashlib.sha256(source.read_bytes() + "\0".join([cc, *flags, platform.machine(), cpu_key]).encode())
        target = cache_dir() / f"host_kernels-{key.hexdigest()[:16]}.so"
        refused = target.with_suffix(".refused")  # this compiler refused TUNING (and the portable build worked)
        if cpu_key and refused.is_file():
            continue
        try:
            if not target.is_file():
                build(cc, source, target, flags)
            library = ctypes.CDLL(str(target))
            _declare(library)
        except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as exc:
            failure, tuned_failed = exc, refused if cpu_key else tuned_failed
            continue
        if tuned_failed is not None:  # the next process goes straight to the portable library
            with contextlib.suppress(OSError):
                tuned_failed.write_text(f"{failure}\n")
        shown = " ".join(f for f in flags if f not in ("-shared", "-fPIC"))
        return library, f"compiled with {cc} ({shown}), cached in {target.parent}"
    return None, f"could not build or load {SOURCE} with {cc}: {failure}"


def describe() -> str:
    """One line for ``gpubp info``: how the CPU backend runs its optimizer updates, ReLU, BP2 and softmax."""
    library, how = compiled_kernels()
    runs = "C, " + how if library is not None else "NumPy twins: " + how
    return f"CPU kernels (optimizer updates, ReLU, BP2, softmax): {runs}"
