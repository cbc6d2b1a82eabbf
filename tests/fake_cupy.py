"""A stand-in for the three CuPy kernel classes gpubp.kernels uses, running on NumPy arrays.

ElementwiseKernel and ReductionKernel are emulated the way CuPy builds them: the type
placeholders become typedefs, every non-raw argument is broadcast to the common shape and bound
to element ``i`` (inputs as const values, outputs as references), raw arguments stay arrays,
and the operation string is pasted into the loop -- but the loop is compiled by g++ for the
host instead of by NVRTC for a GPU. That lets CI, which has no GPU, run the Python glue of
gpubp.kernels (argument order, broadcasting, dtypes, the raw loss array) and the operation
strings themselves. RawModule (warp shuffles) cannot run on the host and is not emulated.
"""

from __future__ import annotations

import ctypes
import hashlib
import subprocess
import tempfile
from pathlib import Path

import numpy as np

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double", np.dtype(np.int64): "long long",
           np.dtype(np.int32): "int", np.dtype(np.bool_): "bool"}
_NAMED = {"int64": np.dtype(np.int64), "int32": np.dtype(np.int32), "bool": np.dtype(np.bool_),
          "float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
_BUILD = Path(tempfile.mkdtemp(prefix="fake_cupy_"))
_LIBRARIES: dict[str, ctypes.CDLL] = {}


def _parse(params: str) -> list[tuple[bool, str, str]]:
    """'T x, raw T y, int64 n' -> [(raw, type, name), ...]."""
    parsed = []
    for param in filter(None, (p.strip() for p in params.split(","))):
        words = param.split()
        parsed.append((words[0] == "raw", words[-2], words[-1]))
    return parsed


def _compile(source: str) -> ctypes.CDLL:
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    if key not in _LIBRARIES:
        cpp, lib = _BUILD / f"{key}.cpp", _BUILD / f"{key}.so"
        cpp.write_text(source)
        cmd = ["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Werror", "-Wno-unused-variable",
               "-o", str(lib), str(cpp)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"g++ failed on the emulated kernel:\n{result.stderr}\n{source}")
        _LIBRARIES[key] = ctypes.CDLL(str(lib))
    return _LIBRARIES[key]


class _Loop:
    """Bind typed arguments, emit a host loop around ``body``, compile it, run it."""

    def __init__(self, params, preamble: str, body: str, name: str):
        self.params, self.preamble, self.body, self.name = params, preamble, body, name

    def run(self, args, types: dict) -> list[np.ndarray]:
        def dtype_of(ptype, arg):
            if ptype in types:
                return types[ptype]
            return _NAMED[ptype]

        arrays = [isinstance(a, np.ndarray) for a in args]
        shape = np.broadcast_shapes(*[a.shape for (raw, _, _), a, is_array in zip(self.params, args, arrays)
                                      if is_array and not raw])
        n = int(np.prod(shape, dtype=np.int64))
        buffers, signature, bindings = [], [], []
        for (raw, ptype, name), arg in zip(self.params, args):
            dtype = dtype_of(ptype, arg)
            ctype = _CTYPES[dtype]
            if raw:
                buffers.append(np.ascontiguousarray(arg, dtype=dtype))
                signature.append(f"{ctype}* {name}")
            else:
                value = np.asarray(arg, dtype=dtype)
                buffers.append(np.ascontiguousarray(np.broadcast_to(value, shape)))
                signature.append(f"{ctype}* {name}_")
                bindings.append(f"{ctype}& {name} = {name}_[i];")
        typedefs = "".join(f"typedef {_CTYPES[t]} {p};\n" for p, t in types.items())
        source = (
            typedefs + self.preamble + "\n"
            f'extern "C" void {self.name}({", ".join(signature)}, long long n) {{\n'
            "  for (long long i = 0; i < n; ++i) {\n    "
            + "\n    ".join(bindings) + "\n    " + self.body + ";\n  }\n}\n"
        )
        function = getattr(_compile(source), self.name)
        function(*[b.ctypes.data_as(ctypes.c_void_p) for b in buffers], ctypes.c_longlong(n))
        return buffers


def _placeholder_types(params, args) -> dict:
    """Type placeholders (one capital letter) from the array arguments, outputs first as CuPy does."""
    types = {}
    for (_, ptype, _), arg in reversed(list(zip(params, args))):
        if len(ptype) == 1 and ptype not in types and hasattr(arg, "dtype"):
            types[ptype] = np.dtype(arg.dtype)
    return types


class ElementwiseKernel:
    def __init__(self, in_params, out_params, operation, name="kernel", preamble=""):
        self.in_params, self.out_params = _parse(in_params), _parse(out_params)
        self.loop = _Loop(self.in_params + self.out_params, preamble, operation, name)

    def __call__(self, *args):
        n_in = len(self.in_params)
        assert len(args) == n_in + len(self.out_params), "gpubp passes every output explicitly"
        params = self.in_params + self.out_params
        buffers = self.loop.run(args, _placeholder_types(params, args))
        for arg, buffer in zip(args[n_in:], buffers[n_in:]):
            arg[...] = buffer.reshape(arg.shape)
        return args[n_in] if len(args) == n_in + 1 else args[n_in:]


class ReductionKernel:
    """Only what gpubp uses: a sum ('a + b', post 'out = a', identity '0') of a mapped value."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name,
                 reduce_type=None, preamble=""):
        (_, out_type, out_name), = _parse(out_params)
        assert (reduce_expr, post_map_expr, identity) == ("a + b", f"{out_name} = a", "0")
        self.in_params = _parse(in_params)
        mapped = (False, out_type, "_mapped")
        self.loop = _Loop(self.in_params + [mapped], preamble, f"_mapped = {map_expr}", name)

    def __call__(self, *args, axis, keepdims):
        params = self.in_params + [(False, "T", "_mapped")]
        shape = np.broadcast_shapes(*[a.shape for a in args])
        mapped = np.empty(shape, dtype=args[0].dtype)
        buffers = self.loop.run([*args, mapped], _placeholder_types(params, [*args, mapped]))
        return buffers[-1].reshape(shape).sum(axis=axis, keepdims=keepdims)


class RawModule:
    def __init__(self, code):
        raise NotImplementedError("RawKernel launches (warp shuffles) cannot be emulated on the host")
