"""A stand-in for the three CuPy kernel classes gpubp.kernels uses, running on NumPy arrays.

NumPy arrays play device arrays. ElementwiseKernel and ReductionKernel bind their arguments the
way CuPy 14 does (cupy/_core/_kernel.pyx, _reduction.pyx), and at least as strictly:

- the type placeholders (``T``) are decided from the array arguments, outputs first; an array
  whose dtype differs from its parameter's fixed type, or from another array bound to the same
  placeholder, raises ``TypeError("Type is mismatched ...")``; scalars are cast to their
  parameter's type;
- array inputs are bound to element ``i`` as ``const T &``, scalar inputs as const values, raw
  inputs as const arrays, so an operation that writes an input does not compile; outputs are
  references; non-raw outputs must be arrays of exactly the broadcast shape; an
  ElementwiseKernel called with its inputs only allocates its outputs as CuPy does (the
  broadcast shape of the non-raw array inputs, types from the inputs; a raw output refused);
- the loop is compiled by tests/fake_nvrtc.py with NVRTC's behaviour under the kernel's
  ``options``: multiply-adds contracted unless ``--fmad=false``, float32 denormals flushed.

A bfloat16 argument (ml_dtypes) is bound to ``bfloat16``, a host class with the interface of
CuPy's cupy/bfloat16.cuh (an implicit conversion to float, a rounding assignment), so a kernel
that computes with bfloat16 compiles and rounds here as it does on the card; a float16 argument
likewise to ``float16``, the interface of cupy/float16.cuh (its conversions written out in
integer operations, so any C++ compiler takes them).

RawModule runs through tests/fake_cuda_threads.py (one host thread per CUDA thread).
Not modelled: the order in which the GPU sums a reduction (NumPy's pairwise sum is used), CUDA's
own exp/log/tanh (the host's libm is used), and kernels the emulation is not given.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .fake_cuda_threads import RawModule  # noqa: F401  (re-exported as cupy.RawModule)
from .fake_nvrtc import FTZ_SCOPE, compile_library

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

# C type and ctypes type of each dtype a kernel argument may have (CuPy's _scalar typenames).
C_TYPES = {
    np.dtype(np.bool_): ("bool", ctypes.c_bool),
    np.dtype(np.int8): ("signed char", ctypes.c_int8),
    np.dtype(np.int16): ("short", ctypes.c_int16),
    np.dtype(np.int32): ("int", ctypes.c_int32),
    np.dtype(np.int64): ("long long", ctypes.c_int64),
    np.dtype(np.uint8): ("unsigned char", ctypes.c_uint8),
    np.dtype(np.uint16): ("unsigned short", ctypes.c_uint16),
    np.dtype(np.uint32): ("unsigned int", ctypes.c_uint32),
    np.dtype(np.uint64): ("unsigned long long", ctypes.c_uint64),
    np.dtype(np.float32): ("float", ctypes.c_float),
    np.dtype(np.float64): ("double", ctypes.c_double),
    BFLOAT16: ("bfloat16", ctypes.c_uint16),
    np.dtype(np.float16): ("float16", ctypes.c_uint16),
}
# The host twin of CuPy's ``bfloat16`` (cupy/_core/include/cupy/bfloat16.cuh, put in front of a
# kernel that has a bfloat16 argument, as _scalar.pyx's typename include does): the same
# interface, an implicit conversion to float and a rounding assignment (nearest, ties to even,
# NaN kept quiet, as __float2bfloat16 does), and, like it, no arithmetic operators of its own.
BFLOAT16_HOST = """
#include <cstdint>
#include <cstring>
class bfloat16 {
  std::uint16_t bits_;
 public:
  bfloat16() : bits_(0) {}
  bfloat16(float v) {
    std::uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      bits_ = static_cast<std::uint16_t>((u >> 16) | 0x40u);
    } else {
      bits_ = static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
  }
  operator float() const {
    std::uint32_t u = static_cast<std::uint32_t>(bits_) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  bfloat16& operator=(const bfloat16&) = default;
  template <typename T>
  bfloat16& operator=(const T& rhs) {
    *this = bfloat16(static_cast<float>(rhs));
    return *this;
  }
};
"""


# The host twin of CuPy's ``float16`` (cupy/_core/include/cupy/float16.cuh of v14.2.0, put in
# front of a kernel with a float16 argument by _scalar.pyx's typename include): an implicit
# conversion from and to float (__float2half_rn: nearest, ties to even), explicit ones from the
# other types, a rounding assignment from anything, and no arithmetic operators, so
# ``y = x * x + x`` computes in float and rounds once, at the assignment, as on the card.
# (Its bits are kept: passed by value, it travels in an integer register, as ctypes passes the
# c_uint16; the conversions are bit operations, not GCC 12's _Float16, for older compilers.)
FLOAT16_HOST = """
#include <cmath>
#include <cstdint>
#include <cstring>
class float16 {
  std::uint16_t bits_;
  static std::uint16_t from_float(float v) {  // IEEE binary16, nearest, ties to even
    std::uint32_t x;
    std::memcpy(&x, &v, sizeof x);
    std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
    std::uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00u;                // NaN
    if (ax >= 0x47800000u) return sign | 0x7c00u;               // >= 65536 (and inf): inf
    if (ax < 0x38800000u) {                                     // below 2^-14: a multiple of 2^-24
      float m = std::nearbyint(std::fabs(v) * 16777216.0f);    // exact scaling, then nearest-even
      return sign | static_cast<std::uint16_t>(m);              // 1024 is the smallest normal
    }
    std::uint32_t h = ((((ax >> 23) - 112u) << 10) | ((ax >> 13) & 0x3ffu));  // exponent - 127 + 15
    std::uint32_t rest = ax & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;   // a carry may reach inf: right
    return sign | static_cast<std::uint16_t>(h);
  }
  static float to_float(std::uint16_t b) {
    std::uint32_t sign = static_cast<std::uint32_t>(b & 0x8000u) << 16, e = (b >> 10) & 0x1fu, m = b & 0x3ffu;
    if (e == 0) return (sign ? -1.0f : 1.0f) * static_cast<float>(m) * 5.9604644775390625e-8f;  // m 2^-24
    std::uint32_t x = sign | (e == 31 ? 0x7f800000u | (m << 13) : ((e + 112u) << 23) | (m << 13));
    float v;
    std::memcpy(&v, &x, sizeof v);
    return v;
  }
 public:
  float16() : bits_(0) {}
  float16(float v) : bits_(from_float(v)) {}
  explicit float16(double v) : float16(static_cast<float>(v)) {}
  explicit float16(int v) : float16(static_cast<float>(v)) {}
  explicit float16(long long v) : float16(static_cast<float>(v)) {}
  operator float() const { return to_float(bits_); }
  float16& operator=(const float16&) = default;
  template <typename T>
  float16& operator=(const T& rhs) {
    *this = static_cast<float16>(rhs);
    return *this;
  }
};
"""
HOST_CLASSES = {BFLOAT16: BFLOAT16_HOST, np.dtype(np.float16): FLOAT16_HOST}


@dataclass(frozen=True)
class Param:
    """One parameter of a kernel's in_params or out_params string."""

    name: str
    ctype: str  # a one-letter placeholder or a dtype name
    raw: bool
    is_input: bool

    @property
    def fixed_dtype(self):
        return None if len(self.ctype) == 1 else np.dtype(self.ctype)


def parse_params(text: str, is_input: bool) -> list[Param]:
    """'T x, raw T y, int64 n' -> Params; CuPy's syntax errors are errors here too."""
    params = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        words = part.split()
        if len(words) < 2 or any(w != "raw" for w in words[:-2]):
            raise ValueError(f"syntax error in kernel parameter {part!r}")
        if words[-1] == "i":
            raise ValueError("Can not use 'i' as a parameter name")
        params.append(Param(words[-1], words[-2], "raw" in words[:-2], is_input))
    return params


def decide_types(params: list[Param], args) -> dict[str, np.dtype]:
    """Placeholder -> dtype from the array arguments, outputs first, as CuPy decides them."""
    types: dict[str, np.dtype] = {}
    order = [k for k, p in enumerate(params) if not p.is_input] + [k for k, p in enumerate(params) if p.is_input]
    for k in order:
        param, arg = params[k], args[k]
        if not isinstance(arg, np.ndarray):
            if not param.is_input:
                raise TypeError("Output arguments type must be cupy.ndarray")
            continue
        expected = param.fixed_dtype if param.fixed_dtype is not None else types.setdefault(param.ctype, arg.dtype)
        if arg.dtype != expected:
            raise TypeError(f"Type is mismatched. {param.name} {arg.dtype} {expected} {param.ctype}")
    for param in params:
        if param.fixed_dtype is None and param.ctype not in types:
            raise TypeError(f"the type {param.ctype} of {param.name} is not decided by any array argument")
    return types


def dtype_of(param: Param, types) -> np.dtype:
    return param.fixed_dtype if param.fixed_dtype is not None else types[param.ctype]


class _Loop:
    """A host loop over element i: bind the arguments as CuPy does, compile, run, write back."""

    def __init__(self, params: list[Param], preamble: str, body: str, name: str, options: tuple):
        self.params, self.preamble, self.body, self.name, self.options = params, preamble, body, name, options

    def run(self, args) -> None:
        types = decide_types(self.params, args)
        shape = _loop_shape(self.params, args)
        size = int(np.prod(shape, dtype=np.int64))
        buffers, values, signature, bindings = [], [], [], []
        for param, arg in zip(self.params, args):
            dtype = dtype_of(param, types)
            ctype, c_scalar = C_TYPES[dtype]
            const = "const " if param.is_input else ""
            if not isinstance(arg, np.ndarray):  # a scalar: passed by value, cast as CuPy casts it
                signature.append(f"const {ctype} {param.name}")
                scalar = np.asarray(arg).astype(dtype)
                values.append(c_scalar((scalar.view(np.uint16) if dtype in HOST_CLASSES else scalar).item()))
                continue
            if param.raw:
                buffer = np.ascontiguousarray(arg)
                signature.append(f"{const}{ctype}* {param.name}")
            else:
                if not param.is_input and arg.shape != shape:
                    raise ValueError(f"Out shape is mismatched: {param.name} {arg.shape}, loop {shape}")
                buffer = np.ascontiguousarray(np.broadcast_to(arg, shape))
                signature.append(f"{const}{ctype}* {param.name}_")
                bindings.append(f"{const}{ctype}& {param.name} = {param.name}_[i];")
            buffers.append((arg, buffer, param))
            values.append(buffer.ctypes.data_as(ctypes.c_void_p))
        # bfloat16 and float16 are computed in float: CuPy's -ftz=true flushes them as it does float32
        floats = {np.dtype(np.float32) if d in HOST_CLASSES else d for d in (dtype_of(p, types) for p in self.params)}
        floats &= {np.dtype(np.float32), np.dtype(np.float64)}
        source = self._source(types, signature, bindings, ftz=floats == {np.dtype(np.float32)})
        function = getattr(compile_library(source, self.options), self.name)
        function(*values, ctypes.c_longlong(size))
        for arg, buffer, param in buffers:
            if not param.is_input:
                arg[...] = buffer.reshape(arg.shape)

    def _source(self, types, signature, bindings, ftz: bool) -> str:
        typedefs = "".join(f"typedef {C_TYPES[t][0]} {p};\n" for p, t in sorted(types.items()))
        used = [dtype_of(p, types) for p in self.params]  # the type parameters' and the fixed types
        classes = "".join(source for dtype, source in HOST_CLASSES.items() if dtype in used)
        return (
            "#include <cstddef>\n" + FTZ_SCOPE + classes + typedefs + self.preamble + "\n"
            f'extern "C" void {self.name}({", ".join(signature + ["long long _size"])}) {{\n'
            f"  gpubp_ftz_scope ftz({'true' if ftz else 'false'});\n"
            "  for (ptrdiff_t i = 0; i < _size; ++i) {\n    "
            + "\n    ".join(bindings) + "\n    " + self.body + ";\n  }\n}\n"
        )


def _loop_shape(params: list[Param], args) -> tuple:
    arrays = [a.shape for p, a in zip(params, args) if isinstance(a, np.ndarray) and not p.raw]
    if not arrays:
        raise ValueError("Loop size is undecided.")
    return np.broadcast_shapes(*arrays)


def _check_name(name: str) -> None:
    if not name.isidentifier():
        raise ValueError(f'Invalid kernel name: "{name}"')


class ElementwiseKernel:
    """cupy.ElementwiseKernel: called with every argument, or with the inputs only (new outputs)."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True, preamble="",
                 no_return=False, return_tuple=False, options=(), loop_prep="", after_loop=""):
        _check_name(name)
        if loop_prep or after_loop:
            raise NotImplementedError("loop_prep and after_loop are not emulated")
        self.in_params, self.out_params = parse_params(in_params, True), parse_params(out_params, False)
        self.no_return, self.return_tuple = no_return, return_tuple
        self.loop = _Loop(self.in_params + self.out_params, preamble, operation, name, options)

    def __call__(self, *args, size=-1, stream=None, block_size=128):
        n_in, n_all = len(self.in_params), len(self.in_params) + len(self.out_params)
        if len(args) == n_in:
            args = (*args, *self._new_outputs(args))
        if len(args) != n_all:
            raise TypeError(f"Wrong number of arguments: it must be either {n_in} or {n_all}, but given {len(args)}")
        if size != -1:
            raise NotImplementedError("size= is not emulated")
        self.loop.run(args)
        outputs = args[n_in:]
        if self.no_return:
            return None
        return outputs[0] if len(outputs) == 1 and not self.return_tuple else tuple(outputs)

    def _new_outputs(self, args) -> list[np.ndarray]:
        """The outputs CuPy allocates for a call with the inputs only (cupy/_core/_kernel.pyx of
        v14.2.0, ``_get_out_args_with_params``): a raw output raises, the others take the
        broadcast shape of the non-raw array inputs and their type from the inputs
        (``_decide_params_type_core``)."""
        if any(p.raw for p in self.out_params):
            raise ValueError("Output array size is Undecided")
        types = decide_types(self.in_params, args)
        undecided = [p.name for p in self.out_params if p.fixed_dtype is None and p.ctype not in types]
        if undecided:
            raise TypeError(f"the type of output {undecided[0]} is not decided by any array input")
        return [np.empty(_loop_shape(self.in_params, args), dtype_of(p, types)) for p in self.out_params]


class ReductionKernel:
    """cupy.ReductionKernel for what gpubp uses: a sum ('a + b', post 'out = a', identity '0')
    of a mapped value. The map is compiled and run on the host; NumPy sums the mapped values."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity,
                 name="reduce_kernel", reduce_type=None, reduce_dims=True, preamble="", options=()):
        _check_name(name)
        self.in_params = parse_params(in_params, True)
        (self.out_param,) = parse_params(out_params, False)
        if (reduce_expr, post_map_expr, identity) != ("a + b", f"{self.out_param.name} = a", "0"):
            raise NotImplementedError("only sum reductions are emulated")
        if reduce_type not in (None, self.out_param.ctype):
            raise NotImplementedError("a reduce_type other than the output's type is not emulated")
        mapped = Param("_mapped", self.out_param.ctype, False, False)
        self.loop = _Loop(self.in_params + [mapped], preamble, f"_mapped = {map_expr}", name, options)

    def __call__(self, *args, out=None, axis=None, keepdims=False, stream=None):
        if out is not None:
            raise NotImplementedError("out= is not emulated")
        if len(args) != len(self.in_params):
            raise TypeError(f"Wrong number of arguments: {len(self.in_params)} expected, {len(args)} given")
        types = decide_types(self.in_params, args)
        mapped = np.empty(_loop_shape(self.in_params, args), dtype=dtype_of(self.out_param, types))
        self.loop.run([*args, mapped])
        return mapped.sum(axis=axis, keepdims=keepdims, dtype=mapped.dtype)
