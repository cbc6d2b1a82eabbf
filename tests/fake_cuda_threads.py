"""cupy.RawModule on the host: each CUDA thread of a launch is a host thread.

The module's source is compiled by g++ (tests/fake_nvrtc.py, with NVRTC's FMA and FTZ behaviour)
after a prelude that defines what a kernel sees on a GPU: ``threadIdx``, ``blockIdx``,
``blockDim``, ``gridDim`` and ``__shfl_xor_sync``. Blocks run one after another; inside a block
every thread runs at once, and the 32 lanes of a warp meet at each shuffle (two barriers: all
lanes post their value, then all read their partner's). Each ``extern "C" __global__`` function
gets a launcher that ctypes calls with the grid, the block and the arguments.

Stricter than CuPy, which passes raw pointers and would run undefined behaviour instead:
an array whose dtype is not the C parameter's type, a non-contiguous array, a scalar of another
type than the parameter's, a block of more than 1024 threads, a partial mask, and a shuffle in a
warp where a lane has already returned (or that is not full) all raise.
Not modelled: shared memory, ``__syncthreads``, atomics, streams; a kernel using them does not
compile here.
"""

from __future__ import annotations

import ctypes
import re

import numpy as np

from .fake_nvrtc import FTZ_SCOPE, compile_library

PRELUDE = FTZ_SCOPE + r"""
#include <atomic>
#include <barrier>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct gpubp_dim3 { unsigned x = 1, y = 1, z = 1; };
static thread_local gpubp_dim3 threadIdx, blockIdx;
static gpubp_dim3 blockDim, gridDim;

struct gpubp_warp {
    explicit gpubp_warp(int lanes) : meet(lanes), active(lanes) {}
    std::barrier<> meet;
    std::atomic<int> active;
    unsigned char slots[32][16];
};
static thread_local gpubp_warp* gpubp_my_warp = nullptr;
static thread_local int gpubp_lane = 0;
static std::atomic<int> gpubp_error{0};  // 1: partial mask, 2: shuffle with missing lanes

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask) {
    static_assert(sizeof(T) <= 16, "shuffled value too large");
    if (mask != 0xffffffffu) gpubp_error = 1;
    std::memcpy(gpubp_my_warp->slots[gpubp_lane], &var, sizeof(T));
    gpubp_my_warp->meet.arrive_and_wait();
    // Past the barrier, a lane that returned instead of shuffling has dropped out (its drop is
    // what let the phase complete), while no lane of a full warp can have left yet.
    if (gpubp_my_warp->active.load() != 32) gpubp_error = 2;
    T other;
    std::memcpy(&other, gpubp_my_warp->slots[(gpubp_lane ^ lane_mask) & 31], sizeof(T));
    gpubp_my_warp->meet.arrive_and_wait();
    return other;
}

template <typename Body>
int gpubp_launch(gpubp_dim3 grid, gpubp_dim3 block, bool ftz, Body body) {
    gridDim = grid;
    blockDim = block;
    gpubp_error = 0;
    const unsigned threads = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::vector<std::unique_ptr<gpubp_warp>> warps;
        for (unsigned first = 0; first < threads; first += 32) {
            warps.push_back(std::make_unique<gpubp_warp>(int(std::min(32u, threads - first))));
        }
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t) {
            pool.emplace_back([&, t] {
                gpubp_ftz_scope scope(ftz);
                blockIdx = {bx, by, bz};
                threadIdx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
                gpubp_my_warp = warps[t / 32].get();
                gpubp_lane = int(t % 32);
                body();
                gpubp_my_warp->active.fetch_sub(1);
                gpubp_my_warp->meet.arrive_and_drop();
            });
        }
        for (auto& thread : pool) thread.join();
    }
    return gpubp_error.load();
}
"""

_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
_POINTEE = {"float": np.float32, "double": np.float64, "long long": np.int64, "int": np.int32,
            "unsigned int": np.uint32, "bool": np.bool_, "unsigned long long": np.uint64}
_SCALAR = {"float": ctypes.c_float, "double": ctypes.c_double, "long long": ctypes.c_int64,
           "int": ctypes.c_int32, "unsigned int": ctypes.c_uint32, "bool": ctypes.c_bool,
           "unsigned long long": ctypes.c_uint64}
_ERRORS = {1: "__shfl_xor_sync with a mask other than the full warp",
           2: "__shfl_xor_sync in a warp with returned or missing lanes (undefined on a GPU)"}


def _c_params(text: str) -> list[tuple[str, str, str]]:
    """'const float* z, long long n' -> [('const ', 'float', '*', 'z'), ('', 'long long', '', 'n')]."""
    params = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(const\s+)?([\w ]+?)\s*(\*?)\s*(\w+)", part)
        if match is None or match.group(2) not in _POINTEE:
            raise NotImplementedError(f"kernel parameter {part!r} is not emulated")
        const, ctype, pointer, name = match.groups()
        params.append(("const " if const else "", ctype, pointer, name))
    return params


class RawModule:
    """cupy.RawModule(code=..., options=...) compiled for the host."""

    def __init__(self, *, code: str, options: tuple = (), name_expressions=None, jitify=False):
        if name_expressions or jitify:
            raise NotImplementedError("name_expressions and jitify are not emulated")
        self.kernels = {name: _c_params(params) for name, params in _KERNEL.findall(code)}
        launchers = [self._launcher(name, params) for name, params in self.kernels.items()]
        self.library = compile_library(PRELUDE + code + "\n" + "\n".join(launchers), options, std="c++20")

    @staticmethod
    def _launcher(name: str, params) -> str:
        decls = ", ".join(f"{const}{ctype}{pointer} {name}" for const, ctype, pointer, name in params)
        names = ", ".join(name for *_, name in params)
        return (f'extern "C" int gpubp_launch_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
                f"unsigned by, unsigned bz, bool ftz, {decls}) {{\n"
                f"    return gpubp_launch({{gx, gy, gz}}, {{bx, by, bz}}, ftz, [=] {{ {name}({names}); }});\n}}\n")

    def get_function(self, name: str) -> "RawKernel":
        if name not in self.kernels:
            raise KeyError(f"no extern \"C\" __global__ function {name!r} in the module")
        return RawKernel(getattr(self.library, f"gpubp_launch_{name}"), name, self.kernels[name])


class RawKernel:
    """One kernel of a RawModule: kernel(grid, block, args) as CuPy launches it."""

    def __init__(self, launcher, name: str, params):
        self.launcher, self.name, self.params = launcher, name, params

    def __call__(self, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0, stream=None):
        # as cupy/cuda/function.pyx's Function.__call__(self, tuple grid, tuple block, ...): tuples
        # only, padded to three dimensions, each at least 1 (a zero launches one block)
        if not isinstance(grid, tuple) or not isinstance(block, tuple):
            raise TypeError(f"{self.name}: grid and block must be tuples, got {type(grid).__name__} and "
                            f"{type(block).__name__}")
        grid3, block3 = (tuple(max(1, int(d)) for d in (dims + (1, 1))[:3]) for dims in (grid, block))
        if np.prod(block3) > 1024:
            raise ValueError(f"a block of {np.prod(block3)} threads: CUDA allows at most 1024")
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments, {len(args)} given")
        values, floats = [], set()
        for (_, ctype, pointer, pname), arg in zip(self.params, args):
            values.append(self._convert(ctype, bool(pointer), pname, arg))
            if ctype in ("float", "double"):
                floats.add(ctype)
        error = self.launcher(*(ctypes.c_uint(int(d)) for d in grid3 + block3),
                              ctypes.c_bool(floats == {"float"}), *values)
        if error:
            raise RuntimeError(f"{self.name}: {_ERRORS[error]}")

    def _convert(self, ctype: str, pointer: bool, pname: str, arg):
        expected = np.dtype(_POINTEE[ctype])
        if pointer:
            if not isinstance(arg, np.ndarray) or arg.dtype != expected or not arg.flags.c_contiguous:
                raise TypeError(f"{self.name}: {pname} must be a C-contiguous {expected} array, got "
                                f"{getattr(arg, 'dtype', type(arg).__name__)}"
                                f"{'' if getattr(arg, 'flags', None) is None or arg.flags.c_contiguous else ' (strided)'}")
            return arg.ctypes.data_as(ctypes.c_void_p)
        if isinstance(arg, np.ndarray):  # a device array's host view (a host one came as its one value)
            raise TypeError(f"{self.name}: {pname} is passed by value, got a device array (CuPy would pass "
                            "the bytes of its CArray, its address first): pass a NumPy scalar")
        if np.asarray(arg).dtype != expected:  # CuPy would pass the bytes of the other type
            raise TypeError(f"{self.name}: {pname} must be a {expected} scalar, got {np.asarray(arg).dtype}")
        return _SCALAR[ctype](np.asarray(arg).item())
