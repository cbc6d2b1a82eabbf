"""A strict, NumPy-backed stand-in for the ``cupy`` module, so CI runs gpubp's cuda backend.

:func:`install` puts it in ``sys.modules["cupy"]`` for one test (the ``fake_cupy`` fixture of
tests/conftest.py calls it). Device arrays are :class:`ndarray`, a ``numpy.ndarray`` subclass
whose class says it is ``cupy.ndarray``; host arrays are plain ``numpy.ndarray``. The kernel
classes are those of tests/fake_cupy.py (g++ playing NVRTC), wrapped to take device arrays.

Where CuPy refuses to mix host and device, so does the stand-in (cited from CuPy's source,
cupy/cupy at 6b6d9563c, the version the project's mirror holds):

- ``numpy.asarray``, ``array``, ``asanyarray``, ``ascontiguousarray``, ``asfortranarray`` on a
  device array (or a list holding one) raise TypeError, as ``cupy.ndarray.__array__`` does
  (cupy/_core/core.pyx, ``ndarray.__array__``). These five numpy functions are patched only
  while installed, through the test's monkeypatch, and restored after it;
- a ufunc (``+``, ``*=``, ``@``, ``numpy.exp``, ``out=``, ``where=``) with a ``numpy.ndarray``
  among its operands raises TypeError: CuPy's ``__array_ufunc__`` hands it to the cupy ufunc,
  whose ``_preprocess_args`` wraps the host array as a ``CScalar``, which raises
  ``Unsupported type <class 'numpy.ndarray'>`` (core.pyx ``__array_ufunc__``, _kernel.pyx
  ``_preprocess_arg``, _scalar.pyx ``CScalar.__init__``); a 0-d host array compared with ``<``
  etc. is taken as its value, as CuPy's workaround for numpy#12142 does; a list operand gives
  NotImplemented, so NumPy raises TypeError;
- a NumPy function (``numpy.stack``, ``numpy.vdot`` ...) on device arrays runs as CuPy's
  function of the same name (core.pyx ``__array_function__``): a host array among its arguments
  raises TypeError, and a function CuPy does not have (:data:`NOT_IN_CUPY`) raises TypeError;
- ``cupy.xxx`` functions refuse host arrays (``cupy.ascontiguousarray`` is typed
  ``_ndarray_base a``, core.pyx); ``cupy.asarray``, ``cupy.array``, ``cupy.asnumpy`` and
  ``ndarray.set`` are the ways across, as in CuPy (cupy/_creation/from_data.py, cupy/__init__.py
  ``asnumpy``, core.pyx ``ndarray.set``);
- a kernel argument that is a host array raises TypeError: ElementwiseKernel and ReductionKernel
  go through ``_preprocess_args`` as above; RawKernel takes a host array of size one by value
  and refuses any other (cupy/cuda/function.pyx ``_pointer``);
- ``device[basic index] = host array`` raises ValueError("non-scalar numpy.ndarray cannot be
  used for fill") unless the host array is 0-d: CuPy refuses assignment from CPU arrays
  (_routines_indexing.pyx ``_scatter_op``, "see gh-2079", then core.pyx ``fill``). CuPy raises
  ValueError here, not TypeError, and so does the stand-in; a list holding device arrays raises
  TypeError there (``fill`` calls numpy.asarray on it). With an advanced index (an array or a
  list) CuPy copies the host value to the device, and so does the stand-in;
- indexing a device array with integers gives a 0-d device array; reductions (``sum``, ``max``,
  ``argmax``, ``vdot`` ...) give 0-d device arrays, as in CuPy; ``float()``, ``int()``,
  ``bool()``, ``item()``, ``tolist()`` and ``get()`` bring values to the host;
- ``ndarray.set(arr, stream=s)`` on a ``Stream(non_blocking=True)`` is queued and runs only when
  the host or another stream waits for it (events, ``synchronize``), so reading a device buffer
  before waiting for its copy sees its old contents; ``cupy.cuda.alloc_pinned_memory`` gives
  pinned memory, and writing a pinned buffer before the host has seen its copy finish raises
  :class:`PinnedCopyRace` (cupy/cuda/stream.pyx, pinned_memory.pyx, core.pyx ``ndarray.set``);
- allocations count against a device of fixed capacity (:class:`DeviceMemory`, 80 GiB unless a
  test sets less) through a pool that caches freed blocks as CuPy's ``MemoryPool`` does; an
  allocation that does not fit after freeing the cache and collecting garbage raises
  ``cupy.cuda.memory.OutOfMemoryError`` (a MemoryError) with CuPy's message
  (cupy/cuda/memory.pyx ``OutOfMemoryError``, ``SingleDeviceMemoryPool._try_malloc``).

Stream capture (CUDA graphs; cupy/cuda/stream.pyx ``begin_capture``, ``end_capture``,
``is_capturing``, cupy/cuda/graph.pyx ``Graph.launch``; CUDA's programming guide, "CUDA Graphs",
"Prohibited and Unhandled Operations"), at least as strict as a card and CuPy 14, numbered as
tests/test_fake_capture.py holds them. ``begin_capture(mode)`` takes CUDA's capture modes
(``runtime.streamCaptureModeGlobal``, ``...ThreadLocal``, ``...Relaxed``); None is relaxed, as
in CuPy, which chose it so that its pool may cudaMalloc while capturing (stream.pyx):

1. only a ``non_blocking`` stream captures: the null (legacy) stream raises CuPy's RuntimeError
   ('cannot capture on the default (legacy) stream'), a stream that synchronizes with it
   cudaErrorStreamCaptureImplicit (stricter than CUDA, which fails at the legacy stream's next
   use), a stream already capturing raises too;
2. what the current stream is given while it captures is recorded, not run: ufuncs (``out=``
   too) and reductions, gathers and scatters by index, ``__setitem__``, ``fill``, ``copy``,
   ``astype``, the cupy functions, the kernel classes (ElementwiseKernel, ReductionKernel,
   RawKernel) and FakeCublas's gemms (tests/fake_cublas.py, through :func:`run_on`). Memory that
   existed before is not written; a new output (``cupy.empty`` and ``zeros`` too) is allocated
   from the current pool on the capturing stream and holds garbage until the graph runs: NaN,
   the most negative signed (largest unsigned) integer, True;
3. CuPy's cuBLAS routes (``matmul``, ``@``, ``ndarray.dot``, ``cupy.dot`` and the other
   :data:`_CUBLAS_FUNCTIONS`, bfloat16 included) raise CuPy 14's NotImplementedError('calling
   cuBLAS API during stream capture is currently unsupported') (cupy_backends/cuda/libs/cublas.pyx
   ``setStream``), without invalidating the capture, as there no CUDA call is made;
4. a host sync (``get``, ``item``, ``float()``/``int()``/``bool()``, ``tolist``, ``asnumpy``,
   ``nonzero``, ``synchronize`` or ``done`` of the capturing stream or of an event recorded on it,
   ``Device().synchronize``, ``runtime.deviceSynchronize``) on the capturing stream raises
   CUDARuntimeError ('cudaErrorStreamCaptureUnsupported: operation not permitted when stream is
   capturing') and invalidates the capture, whose ``end_capture`` then raises
   'cudaErrorStreamCaptureInvalidated'. Stricter than CuPy for its copies, which raise a plain
   RuntimeError ('the current stream is capturing, so D2H transfers are disallowed', memory.pyx
   ``MemoryPointer.copy_to_host_async`` ...) before calling CUDA and leave the capture valid
   (CUDARuntimeError is a RuntimeError, so code that catches one catches both). On another
   stream, a host sync, a pageable copy or a cudaMalloc is refused while a capture runs in global
   or thread-local mode (CUDA's "potentially unsafe API calls"), and runs in relaxed mode;
5. a copy from pageable host memory (``ndarray.set``, ``cupy.asarray`` of host data,
   ``device[index array] = host``) is refused as in 4 (``device[...] = host array`` raises CuPy's
   ValueError, as it does without capture). A host scalar (a fill value, a kernel's scalar
   argument, gemm's alpha and beta) is baked in when captured;
6. an allocation on the capturing stream is served only from blocks its pool has cached for that
   stream; one that would need cudaMalloc is refused as in 4, so code warms its pool up on that
   stream first. Stricter than CuPy in its relaxed mode, where cudaMalloc runs (CUDA refuses it,
   with cudaErrorStreamCaptureUnsupported, in global mode): gpubp's rule, so that a graph's memory
   is settled before it is captured. A pool made with ``cupy.cuda.MemoryPool()`` and used through
   ``cupy.cuda.using_allocator(pool.malloc)`` keeps an arena per stream as CuPy's does
   (cupy/cuda/memory.pyx ``SingleDeviceMemoryPool``: ``_arena``, best fit, ``_split``, ``free``
   merging neighbours); an array freed under capture goes back to it at once, and a later
   allocation of the same capture may take it. Stricter than CUDA: the default pool is refused
   under capture (a graph's blocks freed there would go to eager arrays between launches);
7. ``end_capture`` gives a Graph whose ``launch(stream)`` (None: the current stream) runs the
   recorded operations in order, after what was queued on that stream, reading their inputs as
   they are then and writing into the arrays the capture made or targeted, as often as it is
   called; each launch is one in ``cupy.activity`` (the recorded operations are not counted);
8. other streams, and work before ``begin_capture`` or after ``end_capture``, run as without
   capture.

Looser than a card, for capture: thread-local mode is taken as global (the stand-in is one
thread), one capturing stream at a time (no other stream joining a capture through events, no
event nodes: an event recorded on a capturing stream marks nothing), a pinned copy and a graph
launched under capture raise NotImplementedError, any other operation the stand-in cannot record
raises NotImplementedError; an event or stream of another stream may be synchronized while one
captures; blocks a graph writes that the program frees after the capture go back to the pool and
may be given to eager arrays, which the graph's launches would overwrite on a card and do not
here (each array has its own memory in the stand-in). As on a card, a kernel on a stream runs
after the copies queued on that stream before it, and a host read waits for the current stream.

The stand-in also counts what a program asks of the card (``cupy.activity``, an
:class:`Activity`): kernel launches (a ufunc call or reduction, a product, a custom kernel, a
gather or scatter by index, a copy or fill on the device) and host syncs (a device value read on
the host: ``float()``, ``int()``, ``bool()``, ``item()``, ``tolist()``, ``get()``). CuPy runs each
of these as one launch (a few of its routines, ``mean`` for one, run as one where the stand-in
counts two), so a count here is what a step costs in launches on a card, give or take those.

bfloat16 (ml_dtypes, as CuPy 14 registers it): a product with a bfloat16 operand is CuPy's
(cupy/_core/_routines_linalg.pyx ``matmul``, ``dot``, ``tensordot_core``): two 2-D bfloat16
arrays give a bfloat16 result, float32 sums rounded once (cublasGemmEx with CUBLAS_COMPUTE_32F),
copied into a float32 ``out`` when one is given; bfloat16 with float32 is a float32 product;
more than two dimensions raise TypeError (bfloat16's dtype char 'E' sends a batched product to
CuPy's integer kernels, which do not compute it). Kernels bind bfloat16 arguments to a host twin
of cupy/bfloat16.cuh's class (tests/fake_cupy.py). Other ufuncs on bfloat16 run as NumPy runs them
with ml_dtypes (CuPy 14 has bfloat16 loops for the ones gpubp uses: add, multiply, comparisons,
casts, sums); not modelled: a ufunc CuPy lacks a bfloat16 loop for. ``cupy.cuda.cublas`` holds
``gemmEx`` (tests/fake_cublas.py ``cupy_gemm_ex``: bfloat16 A and B into a bfloat16 or float32 C,
refused while capturing) and the handle's math mode (``getMathMode``/``setMathMode``), which each
bfloat16 product records in ``cupy.activity.bfloat16_product_modes``; its effect on the sums is
not modelled (the products always sum in float32).

Stricter than CuPy, on purpose: pickling a device array raises TypeError. CuPy pickles it by
copying it to the host, but the pickle then needs CuPy and a GPU to load (core.pyx
``ndarray.__reduce__`` returns ``cupy.array``); gpubp promises pickles that hold host arrays only.
Also stricter: an out-of-bounds index array raises IndexError (NumPy's rule) where CuPy wraps
around.

Looser than CuPy (the stand-in cannot see these; a card can):

- ``host[...] = device`` and ``host[device_index]`` are not caught: ``numpy.ndarray``'s own
  ``__setitem__`` and ``__getitem__`` take any ndarray subclass without asking it;
- code that took ``asarray`` from numpy by name before the patch (``from numpy import asarray``),
  and NumPy's C-level conversions, are not caught;
- ``ndarray`` methods written in C (``take``, ``put``, ``searchsorted``, ``choose`` ...) take
  host arrays as arguments without complaint (``dot``, ``fill``, ``set``, ``__setitem__`` check);
- results are computed by NumPy: the order of summation, cuBLAS and CUDA's libm are not
  modelled (TF32 is: a float32 product computes as gpubp.precision.matmul_as_tf32 when CuPy's
  float32 compute type, ``cupy._core.set_compute_type``, or for a batched product the handle's
  math mode asks TF32, tests/fake_cupy_core.py; a product with a bfloat16 operand never does)
  (the kernels are: tests/fake_cupy.py), nor several devices or ``cupyx``; ``cupy.random`` is
  ``default_rng`` with ``standard_normal`` and ``integers`` only, drawn by NumPy's generator
  (CuPy's XORWOW gives other values), ``cupy.linalg`` is ``norm``'s default case only;
  ``ndarray.data`` is a :class:`MemoryPointer` whose ``ptr`` is the host address of the array's
  memory; a CUDA event's time is the host's clock when it is recorded (:func:`get_elapsed_time`);
- streams are modelled for copies (:class:`Stream`): computations run at once, after the copies
  queued on the current stream, so a copy on a side stream that overwrites a device buffer a
  computation queued earlier still reads is not caught (on a card it is a race);
- the pool's bookkeeping counts the arrays a call returns, not CuPy's internal temporaries; the
  default pool reuses any cached block large enough, on any stream, and never merges blocks
  (``cupy.cuda.MemoryPool()`` keeps CuPy's arena per stream, splitting and merging, but by exact
  size where CuPy searches by bins).
"""

from __future__ import annotations

import functools
import gc
import itertools
import sys
import time
import types
import weakref

import numpy as np

from gpubp import precision

from . import fake_cupy, fake_cupy_core, fake_nvrtc

__version__ = "14.0.0+gpubp.stand.in"
_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
             "Please use `.get()` to construct a NumPy array explicitly.")  # core.pyx __array__
_UNSUPPORTED = "Unsupported type <class 'numpy.ndarray'>"  # _scalar.pyx CScalar.__init__
_PATCHED = ("array", "asarray", "asanyarray", "ascontiguousarray", "asfortranarray")
# numpy's own conversions, kept before any patch (the stand-in computes with them on the host)
_np = {name: getattr(getattr(np, name), "__wrapped__", getattr(np, name)) for name in _PATCHED}
# NumPy 2.4 functions that CuPy 14 (cupy/__init__.py) does not define: NumPy functions that
# dispatch to cupy.<name> through __array_function__ find nothing and raise TypeError.
NOT_IN_CUPY = frozenset(
    "asmatrix block bmat broadcast_shapes busday_count busday_offset datetime_as_string "
    "datetime_data einsum_path frompyfunc fromregex geomspace get_include getbufsize geterr "
    "geterrcall histogram_bin_edges info insert is_busday nanpercentile nanquantile nested_iters "
    "polyder polydiv polyint setbufsize seterr seterrcall show_runtime test unstack".split())
_COMPARISONS = {"greater", "greater_equal", "less", "less_equal", "equal", "not_equal"}
_ALLOCATION_UNIT = 512  # cudaMalloc aligns to 512 bytes (memory.pyx ALLOCATION_UNIT_SIZE)


# ----------------------------------------------------------------------------- device memory

class OutOfMemoryError(MemoryError):
    """cupy.cuda.memory.OutOfMemoryError, with CuPy's message (memory.pyx)."""

    def __init__(self, size: int, total: int, limit: int = 0):
        self._size, self._total, self._limit = size, total, limit
        if limit == 0:
            msg = f"Out of memory allocating {size:,} bytes"
            if total != -1:
                msg += f" (allocated so far: {total:,} bytes)."
        else:
            msg = (f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes, "
                   f"limit set to: {limit:,} bytes).")
        super().__init__(msg)


class DeviceMemory:
    """One card's memory: a capacity, the live device buffers, and the pool's cached blocks.

    A buffer's bytes (rounded up to 512) are in use while any array on it lives; when the last
    one dies they go to the pool's cache, which later allocations reuse (best fit, the rest of
    the block staying cached). An allocation that fits neither the cache nor the device frees
    the cache, collects garbage and tries again, then raises :class:`OutOfMemoryError`, as
    CuPy's pool does. ``set_limit`` caps what the pool holds, cache included.

    Attributes
    ----------
    capacity : int
        Bytes of the card; ``memGetInfo`` reports ``capacity - total_bytes`` free.
    live : dict
        ``id(buffer) -> (shape, dtype name, bytes)`` of every live device buffer.
    failures : list of OutOfMemoryError
        Every allocation refused, in order (copies of the errors raised, without tracebacks).
    """

    def __init__(self, capacity: int = 80 * 2**30):
        self.capacity = int(capacity)
        self.limit = 0
        self.in_use = 0
        self.cached: list[int] = []  # sizes of the pool's free blocks
        self.live: dict[int, tuple] = {}
        self.roots: dict[int, weakref.ref] = {}  # id(buffer) -> the buffer, for raw pointers (FakeCublas)
        self.failures: list[OutOfMemoryError] = []
        self.pool_cached = 0  # bytes cached by the pools made with cupy.cuda.MemoryPool()
        self.owners: dict[int, weakref.ref] = {}  # id(memory of a captured output) -> its device array

    def total_bytes(self) -> int:
        return self.in_use + sum(self.cached) + self.pool_cached

    def adopt(self, buffer: np.ndarray) -> None:
        """Count ``buffer`` (an array owning its memory) as a device allocation, or raise OOM;
        from the pool of the innermost ``cupy.cuda.using_allocator``, else the default pool."""
        size = -(-buffer.nbytes // _ALLOCATION_UNIT) * _ALLOCATION_UNIT
        pool, stream = (_ALLOCATORS[-1] if _ALLOCATORS else None), get_current_stream().ptr
        release = self._release
        if size and pool is not None:
            chunk = pool.take(stream, size)
            if chunk is None:  # cudaMalloc: refused under capture (global mode), however warm the pool
                _refuse_while_capturing("an allocation the pool could not serve from the blocks it had "
                                        "cached for the capturing stream (warm it up on that stream first)")
                chunk = pool.grow(self, stream, size)
            release = functools.partial(pool.give_back, self, chunk)
        elif size:
            if _capturing() is not None:
                _refuse_while_capturing("an allocation from the default pool (stricter than CUDA: a graph's "
                                        "blocks freed there go to eager arrays, which the next launch overwrites; "
                                        "capture with a pool of its own)")
            self._allocate(size)
        self.live[id(buffer)] = (buffer.shape, buffer.dtype.name, size)
        self.roots[id(buffer)] = weakref.ref(buffer)
        weakref.finalize(buffer, release, id(buffer), size).atexit = False

    def _allocate(self, size: int) -> None:
        fitting = [b for b in self.cached if b >= size]
        if fitting:  # reuse the smallest cached block that is large enough
            block = min(fitting)
            self.cached.remove(block)
            if block > size:
                self.cached.append(block - size)
            self.in_use += size
            return
        _refuse_while_capturing("an allocation the pool had not cached")
        self._allocate_new(size)

    def _allocate_new(self, size: int) -> None:
        """cudaMalloc: new device memory, or OutOfMemoryError."""
        for attempt in range(3):  # as it is, after free_all_blocks, after gc.collect too
            if attempt == 2:
                gc.collect()
            if attempt:
                self.cached.clear()
            limit_ok = not self.limit or self.total_bytes() + size <= self.limit
            if limit_ok and self.total_bytes() + size <= self.capacity:
                self.in_use += size
                return
        # a twin is kept, not the error raised: its traceback would keep the failed step's arrays alive
        self.failures.append(OutOfMemoryError(size, self.total_bytes(), self.limit))
        raise OutOfMemoryError(size, self.total_bytes(), self.limit)

    def _release(self, key: int, size: int) -> None:
        self.live.pop(key, None)
        self.roots.pop(key, None)
        if size:
            self.in_use -= size
            self.cached.append(size)

    def resolve(self, ptr: int, extent: int) -> tuple[np.ndarray, int] | None:
        """(the live device buffer holding bytes ptr .. ptr + extent, ptr's offset in it), or None."""
        for ref in list(self.roots.values()):
            root = ref()
            if root is None:
                continue
            base = root.__array_interface__["data"][0]
            if base <= ptr and ptr + extent <= base + root.nbytes:
                return root, ptr - base
        return None


class MemoryPool:
    """cupy.get_default_memory_pool(): the pool's byte counts and limit over a DeviceMemory."""

    def __init__(self, memory: DeviceMemory):
        self._memory = memory

    def used_bytes(self) -> int:
        return self._memory.in_use

    def free_bytes(self) -> int:
        return sum(self._memory.cached)

    def total_bytes(self) -> int:
        return self._memory.total_bytes()

    def n_free_blocks(self) -> int:
        return len(self._memory.cached)

    def free_all_blocks(self, stream=None) -> None:
        self._memory.cached.clear()

    def free_all_free(self) -> None:
        self.free_all_blocks()

    def get_limit(self) -> int:
        return self._memory.limit

    def set_limit(self, size=None, fraction=None) -> None:
        if size is None and fraction is None:
            size = 0
        elif fraction is not None:
            if size is not None:
                raise ValueError("size and fraction cannot be specified at one time")
            if not 0 <= fraction <= 1:
                raise ValueError(f"memory limit fraction out of range: {fraction}")
            size = int(fraction * self._memory.capacity)
        if size < 0:
            raise ValueError(f"memory limit size out of range: {size}")
        self._memory.limit = int(size)


class _Chunk:
    """A piece of one cudaMalloc'd segment of a :class:`UserMemoryPool` (memory.pyx ``_Chunk``)."""

    def __init__(self, segment: int, offset: int, size: int, stream: int):
        self.segment, self.offset, self.size, self.stream = segment, offset, size, stream


class UserMemoryPool:
    """``cupy.cuda.MemoryPool()``: a pool of its own, used inside ``using_allocator(pool.malloc)``.

    An arena per stream, as CuPy's (memory.pyx ``SingleDeviceMemoryPool``: ``_arena``,
    ``_try_malloc``, ``_split``, ``free`` merging a chunk with its free neighbours): a request
    (rounded up to 512 bytes) takes the smallest free chunk of the current stream's arena that
    fits, splitting off the rest, or else a new segment of its size (cudaMalloc); a freed chunk
    goes back to the arena of the stream it was taken on and merges with the free chunks next to
    it in its segment. A block freed on one stream is never given to an allocation on another.
    ``free_all_blocks`` gives back the segments that are wholly free.
    """

    def __init__(self, allocator=None):
        self.arenas: dict[int, list[_Chunk]] = {}  # stream ptr -> its free chunks
        self.segments: dict[int, int] = {}  # segment number -> size
        self._numbers = itertools.count()
        self._in_use = 0

    def malloc(self, size: int):
        raise NotImplementedError("the CuPy stand-in allocates through its arrays: pass pool.malloc to "
                                  "cupy.cuda.using_allocator")

    def take(self, stream: int, size: int) -> _Chunk | None:
        """A chunk of ``size`` bytes from ``stream``'s arena (best fit, split), or None."""
        arena = self.arenas.get(stream, [])
        fitting = [c for c in arena if c.size >= size]
        if not fitting:
            return None
        chunk = min(fitting, key=lambda c: c.size)
        arena.remove(chunk)
        if chunk.size > size:
            arena.append(_Chunk(chunk.segment, chunk.offset + size, chunk.size - size, stream))
            chunk.size = size
        _MEMORY.pool_cached -= size
        _MEMORY.in_use += size
        self._in_use += size
        return chunk

    def grow(self, memory: "DeviceMemory", stream: int, size: int) -> _Chunk:
        """A new segment of ``size`` bytes (cudaMalloc, or OutOfMemoryError), in use."""
        memory._allocate_new(size)
        number = next(self._numbers)
        self.segments[number] = size
        self._in_use += size
        return _Chunk(number, 0, size, stream)

    def give_back(self, memory: "DeviceMemory", chunk: _Chunk, key: int, size: int) -> None:
        memory.live.pop(key, None)
        memory.roots.pop(key, None)
        memory.in_use -= size
        memory.pool_cached += size
        self._in_use -= size
        arena = self.arenas.setdefault(chunk.stream, [])
        for other in [c for c in arena if c.segment == chunk.segment]:  # merge with free neighbours
            if other.offset + other.size == chunk.offset or chunk.offset + chunk.size == other.offset:
                arena.remove(other)
                chunk = _Chunk(chunk.segment, min(chunk.offset, other.offset), chunk.size + other.size, chunk.stream)
        arena.append(chunk)

    def used_bytes(self) -> int:
        return self._in_use

    def free_bytes(self) -> int:
        return sum(c.size for arena in self.arenas.values() for c in arena)

    def total_bytes(self) -> int:
        return self._in_use + self.free_bytes()

    def n_free_blocks(self) -> int:
        return sum(map(len, self.arenas.values()))

    def free_all_blocks(self, stream=None) -> None:
        """Give back every wholly free segment (of ``stream``'s arena only, when given)."""
        for ptr, arena in self.arenas.items():
            if stream is not None and ptr != stream.ptr:
                continue
            whole = [c for c in arena if c.size == self.segments[c.segment]]
            for c in whole:
                arena.remove(c)
                del self.segments[c.segment]
                _MEMORY.pool_cached -= c.size


_ALLOCATORS: list[UserMemoryPool] = []  # the pools of the using_allocator blocks, innermost last


class using_allocator:  # noqa: N801 - cupy.cuda.using_allocator's name
    """``cupy.cuda.using_allocator(pool.malloc)``: allocations inside come from that pool."""

    def __init__(self, allocator=None):
        pool = getattr(allocator, "__self__", None)
        if not isinstance(pool, UserMemoryPool):
            raise NotImplementedError("the CuPy stand-in takes using_allocator(cupy.cuda.MemoryPool().malloc) only")
        self.pool = pool

    def __enter__(self):
        _ALLOCATORS.append(self.pool)

    def __exit__(self, *exc):
        _ALLOCATORS.pop()


class PinnedMemoryPool:
    """cupy.get_default_pinned_memory_pool(): the stand-in stages nothing in pinned memory."""

    def n_free_blocks(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        pass


_MEMORY = DeviceMemory()  # the memory of the stand-in installed now (install() replaces it)


class Activity:
    """Kernel launches and host syncs asked of the stand-in's card since it was installed."""

    def __init__(self):
        self.launches = 0
        self.syncs = 0
        self.math_modes: dict[int, int] = {}  # cuBLAS handle -> its math mode (cublas.setMathMode)
        self.bfloat16_product_modes: list[int] = []  # the handle's math mode at each bfloat16 product

    def bfloat16_product(self) -> None:
        """Record the math mode a bfloat16 product runs under (cuBLAS reads it at the call)."""
        self.bfloat16_product_modes.append(self.math_modes.get(CUBLAS_HANDLE, 0))

    def launch(self) -> None:
        """A kernel on the current stream: it runs after what was queued on that stream before it."""
        if _capturing() is not None:  # the operations that capture record themselves first
            raise NotImplementedError("the CuPy stand-in does not model this operation under stream capture")
        stream = get_current_stream()
        if stream.queue:
            stream.run_until(stream.issued)
        self.launches += 1

    def sync(self) -> None:
        """The host reads device memory: it waits for the current stream (CuPy's ``get``)."""
        _refuse_while_capturing("a host sync")
        get_current_stream().synchronize()
        self.syncs += 1


_ACTIVITY = Activity()  # the stand-in installed now (install() replaces it)
_CORE = fake_cupy_core.make_core(lambda: "90")[0]  # its cupy._core, compute types (install() replaces it)
# functions CuPy runs through cuBLAS (cupy/_core/_routines_linalg.pyx, cupy/linalg/_product.py)
_CUBLAS_FUNCTIONS = frozenset({"dot", "vdot", "inner", "outer", "matmul", "tensordot", "einsum", "kron"})
# of those, the ones whose float32 2-D products reach tensordot_core_v11 (TF32 by compute type)
_GEMM_FUNCTIONS = frozenset({"dot", "matmul"})
# cupy functions that only allocate or make a view: no launch
_NO_LAUNCH = frozenset({"empty", "empty_like", "reshape", "ravel", "transpose", "swapaxes", "expand_dims",
                        "squeeze", "broadcast_to", "atleast_1d", "atleast_2d", "ndim", "shape", "size",
                        "result_type", "can_cast", "promote_types", "may_share_memory", "shares_memory"})


def _is_tf32(operands) -> bool:
    """Whether CuPy would run the product of these device operands as TF32 now (the float32
    compute type, or the handle's math mode for a batched product: fake_cupy_core)."""
    return len(operands) >= 2 and fake_cupy_core.product_is_tf32(
        _CORE, _ACTIVITY.math_modes.get(CUBLAS_HANDLE, 0), operands[0], operands[1])


def _product(function, tf32: bool):
    """``function`` (a product of host operands a, b, ...), computed as TF32 when ``tf32``: a and b
    rounded to TF32 when it runs, sums in float32 (gpubp.precision.matmul_as_tf32's model)."""
    if not tf32:
        return function

    def tf32_product(a, b, *args, **kwargs):
        return function(precision.round_to_tf32(a), precision.round_to_tf32(b), *args, **kwargs)

    return tf32_product


# ----------------------------------------------------------------------------- arrays

def _is_host(x) -> bool:
    return isinstance(x, np.ndarray) and not isinstance(x, ndarray)


def _bottom(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _root(a: np.ndarray) -> np.ndarray:
    """The device allocation ``a`` views: the first array down its bases that is one, else the
    device array of a captured output's memory (see :func:`_poisoned`), else its bottom."""
    x = a
    while True:
        if id(x) in _MEMORY.live:
            return x
        if not isinstance(x.base, np.ndarray):
            owner = _MEMORY.owners.get(id(x))
            return x if owner is None or owner() is None else owner()
        x = x.base


def _host_view(a: "ndarray") -> np.ndarray:
    """``a`` as a numpy.ndarray on the same memory. On a captured output's memory it is made on
    that memory directly, so that the recorded operations holding it do not keep the output's
    device array, and so its block, alive (numpy's own view of the output itself would not, as
    numpy bases it on the first array of the same type down the chain; of a view of it, would)."""
    bottom = _bottom(a)
    if not a.size or id(bottom) not in _MEMORY.owners:
        return np.ndarray.view(a, np.ndarray)
    offset = a.__array_interface__["data"][0] - bottom.__array_interface__["data"][0]
    raw = bottom.reshape(-1).view(np.uint8)
    return np.ndarray(a.shape, a.dtype, buffer=raw, offset=offset, strides=a.strides)


def _device(x):
    """A NumPy result as CuPy returns it: arrays and scalars as device arrays, the rest as is."""
    if isinstance(x, ndarray):
        return x
    if isinstance(x, np.ndarray):
        return x.view(ndarray)  # counted as an allocation unless it views a device buffer
    if isinstance(x, np.generic):
        return _np["asarray"](x).view(ndarray)  # CuPy's reductions return 0-d arrays
    if isinstance(x, tuple):
        return tuple(_device(v) for v in x)
    if isinstance(x, list):
        return [_device(v) for v in x]
    return x


def _to_host_arg(x, where: str):
    """A device argument as its host view; a host array raises TypeError as CuPy would."""
    if isinstance(x, ndarray):
        return _host_view(x)
    if isinstance(x, np.ndarray):
        raise TypeError(f"{_UNSUPPORTED} ({where} mixes a numpy.ndarray with cupy arrays)")
    if isinstance(x, (list, tuple)):
        return type(x)(_to_host_arg(v, where) for v in x)
    return x


def _holds_device(x, depth: int = 0) -> bool:
    if isinstance(x, ndarray):
        return True
    if isinstance(x, (list, tuple)) and depth < 8:
        return any(_holds_device(v, depth + 1) for v in x)
    return False


class Flags:
    """``cupy.ndarray.flags`` (cupy/_core/flags.pyx): C_CONTIGUOUS, F_CONTIGUOUS and OWNDATA only.
    A device array has no WRITEABLE flag (every one is writable): code that asks for it fails
    here as it does on a card."""

    def __init__(self, c_contiguous: bool, f_contiguous: bool, owndata: bool):
        self.c_contiguous, self.f_contiguous, self.owndata = c_contiguous, f_contiguous, owndata

    def __getitem__(self, name):
        keys = {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous, "OWNDATA": self.owndata}
        if name not in keys:
            raise KeyError(f"{name} is not defined for cupy.ndarray.flags")
        return keys[name]


class ndarray(np.ndarray):
    """cupy.ndarray played by a NumPy array: the stand-in's device array (see the module doc)."""

    def __array_finalize__(self, obj):
        if _NEW_OUTPUT and obj is _NEW_OUTPUT[-1]:  # a captured output: the allocation is this array
            _MEMORY.adopt(self)
            return
        root = _root(self)
        if id(root) not in _MEMORY.live:
            _MEMORY.adopt(root)
        elif isinstance(root, ndarray) and root is not self:  # a captured output's: made on its memory
            self._allocation = root  # (numpy's bases skip it, see _host_view), so this keeps it alive

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        return arr.view(ndarray) if isinstance(arr, np.ndarray) else _device(arr)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __reduce__(self):
        raise TypeError("a cupy.ndarray is being pickled: CuPy would copy it to the host, and the "
                        "pickle would need CuPy and a GPU to load (the stand-in refuses it)")

    def __reduce_ex__(self, protocol):
        return self.__reduce__()

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _apply_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        if func.__name__ in NOT_IN_CUPY:
            return NotImplemented  # NumPy then raises TypeError: no implementation found
        where = f"numpy.{func.__name__}"
        if func.__name__ in _CUBLAS_FUNCTIONS:
            refuse_cublas()
        if func.__name__ in _GEMM_FUNCTIONS:
            func = _product(func, _is_tf32(args))
        host_args = _to_host_arg(args, where)
        host_kwargs = {k: _to_host_arg(v, where) for k, v in kwargs.items()}
        if func.__name__ in _NO_LAUNCH:
            return _device(func(*host_args, **host_kwargs))
        return _run(lambda: func(*host_args, **host_kwargs))

    def __getitem__(self, key):
        if _is_advanced(key) or isinstance(key, ndarray):  # a gather; a basic index is a view
            host, index = _host_view(self), _to_index(key)
            return _run(lambda: np.ndarray.__getitem__(host, index))
        result = np.ndarray.__getitem__(self, _to_index(key))
        if not isinstance(result, np.ndarray):  # an element: CuPy gives a 0-d view
            key = key if isinstance(key, tuple) else (key,)
            result = np.ndarray.__getitem__(self, _to_index(key) + (Ellipsis,))
        return result

    def __setitem__(self, key, value):  # a fill, copy or scatter
        if isinstance(value, (list, tuple)) and _holds_device(value):
            if not _is_advanced(key):  # CuPy's fill calls numpy.asarray on it: __array__ raises
                raise TypeError(_IMPLICIT)
            value = _host_view(array(value))
        elif _is_host(value) or isinstance(value, (list, tuple)):
            if not _is_advanced(key):
                if np.ndim(_np["asarray"](value)) != 0:
                    raise ValueError("non-scalar numpy.ndarray cannot be used for fill")  # core.pyx fill
                value = _np["asarray"](value)[()]
            else:
                _refuse_while_capturing("a copy from pageable host memory")
                value = _np["asarray"](value)  # CuPy copies it to the device (_scatter_op_single)
        elif isinstance(value, ndarray):
            value = _host_view(value)
        target, index = _host_view(self), _to_index(key)
        _run_write(lambda: np.ndarray.__setitem__(target, index, value))

    def __repr__(self):
        return repr(self.get())  # as CuPy prints: array([...])

    def __str__(self):
        return str(self.get())

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def fill(self, value):
        target = _host_view(self)
        if isinstance(value, np.ndarray):
            if value.shape != ():
                kind = "cupy" if isinstance(value, ndarray) else "numpy"
                raise ValueError(f"non-scalar {kind}.ndarray cannot be used for fill")
            if isinstance(value, ndarray):  # a copy on the device (core.pyx fill: elementwise_copy)
                source = _host_view(value)
                _run_write(lambda: np.ndarray.__setitem__(target, Ellipsis, source))
                return
            value = value.item()
        _run_write(lambda: np.ndarray.fill(target, value))

    def dot(self, b, out=None):
        refuse_cublas()
        if fake_cupy.BFLOAT16 in (self.dtype, getattr(b, "dtype", None)):
            return _apply_ufunc(np.matmul, "__call__", (self, b), {} if out is None else {"out": (out,)})
        dot = _product(np.dot, _is_tf32((self, b)))
        _ACTIVITY.launch()
        return _device(dot(*_to_host_arg((self, b), "ndarray.dot"),
                              out=None if out is None else _to_host_arg(out, "ndarray.dot")))

    def argmax(self, axis=None, out=None, *, keepdims=False):
        host = _host_view(self)
        return _run(lambda: host.argmax(axis=axis, keepdims=keepdims))

    def argmin(self, axis=None, out=None, *, keepdims=False):
        host = _host_view(self)
        return _run(lambda: host.argmin(axis=axis, keepdims=keepdims))

    def nonzero(self):
        _ACTIVITY.sync()  # CuPy reads the count of nonzero elements on the host (_indexing.pyx)
        return _device(_host_view(self).nonzero())

    def get(self, stream=None, order="C", out=None, blocking=True):
        """A host copy (numpy.ndarray), or the copy written into ``out``."""
        _ACTIVITY.sync()
        if out is not None:
            if not _is_host(out):
                raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
            out[...] = _host_view(self)
            return out
        return _np["array"](_host_view(self), order=order, copy=True)

    def set(self, arr, stream=None):
        """Copy host ``arr`` in, with CuPy's checks (core.pyx ``ndarray.set``)."""
        if not _is_host(arr):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if not (self.flags.c_contiguous or self.flags.f_contiguous):
            raise RuntimeError("Cannot set to non-contiguous array")
        _copy_to_device(_host_view(self), arr, stream)

    def copy(self, order="C"):
        host = _host_view(self)
        return _run(lambda: np.array(host, order=order, copy=True))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        host = _host_view(self)
        return _run(lambda: np.ndarray.astype(host, dtype, order=order))

    def __float__(self):
        _ACTIVITY.sync()
        return float(_host_view(self))

    def __int__(self):
        _ACTIVITY.sync()
        return int(_host_view(self))

    def __index__(self):  # CuPy's ndarray has no __index__: range(d), seq[d] of a device integer fail
        raise TypeError("'cupy.ndarray' object cannot be interpreted as an integer")

    def __bool__(self):
        _ACTIVITY.sync()
        return bool(_host_view(self))

    def item(self):  # CuPy's item takes no index (core.pyx: cpdef item(self)); it needs size 1
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        _ACTIVITY.sync()
        return _host_view(self).item()

    def tolist(self):
        _ACTIVITY.sync()
        return _host_view(self).tolist()

    @property
    def flags(self):
        f = _host_view(self).flags
        return Flags(f.c_contiguous, f.f_contiguous, f.owndata)

    @property
    def device(self):
        return Device(0)

    @property
    def data(self):
        """cupy.cuda.MemoryPointer of the array's first element: ``.ptr``, a real address here."""
        return MemoryPointer(self.__array_interface__["data"][0])


ndarray.__module__ = "cupy"  # gpubp.backend tells CuPy arrays by their type's module


def _to_index(key):
    """An index with device arrays as host views (CuPy takes host index arrays too)."""
    if isinstance(key, tuple):
        return tuple(_host_view(k) if isinstance(k, ndarray) else k for k in key)
    return _host_view(key) if isinstance(key, ndarray) else key


def _is_advanced(key) -> bool:
    parts = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (np.ndarray, list, bool, np.bool_)) for k in parts)


def _apply_ufunc(ufunc, method, inputs, kwargs):
    """A NumPy ufunc on device operands as CuPy runs it (core.pyx ``__array_ufunc__``)."""
    where = f"{ufunc.__name__}{'' if method == '__call__' else '.' + method}"
    if ufunc.__name__ in _COMPARISONS:  # CuPy's workaround for numpy#12142
        inputs = tuple(x.item() if _is_host(x) and x.ndim == 0 else x for x in inputs)
    for x in inputs:
        if not isinstance(x, (np.ndarray, np.generic, int, float, complex, bool)):
            return NotImplemented
    out = kwargs.get("out")
    if ufunc is np.matmul:
        refuse_cublas()
    if _capturing() is not None and method != "at":  # recorded: computed at each graph launch
        host_inputs = _to_host_arg(inputs, where)
        host_kwargs = {k: _to_host_arg(v, where) for k, v in kwargs.items() if k != "out"}
        return _run(lambda: getattr(ufunc, method)(*host_inputs, **host_kwargs), None if out is None else tuple(out))
    _ACTIVITY.launch()
    host_kwargs = {k: _to_host_arg(v, where) for k, v in kwargs.items()}
    if ufunc is np.matmul and any(getattr(x, "dtype", None) == fake_cupy.BFLOAT16 for x in inputs):
        result = _bfloat16_matmul(*_to_host_arg(inputs, where), **host_kwargs)
    elif ufunc is np.matmul and method == "__call__":  # read at the call, as tensordot_core_v11 does
        result = _product(np.matmul, _is_tf32(inputs))(*_to_host_arg(inputs, where), **host_kwargs)
    else:
        result = getattr(ufunc, method)(*_to_host_arg(inputs, where), **host_kwargs)
    if out is not None:  # results written into the caller's device arrays: return those
        return out[0] if len(out) == 1 else out
    return _device(result)


def _bfloat16_matmul(a, b, out=None, **kwargs):
    """cupy.matmul with a bfloat16 operand, as CuPy 14 computes it (_routines_linalg.pyx): two 2-D
    bfloat16 arrays give a bfloat16 product, float32 sums rounded once (cublasGemmEx, CUDA_R_16BF,
    CUBLAS_COMPUTE_32F), copied into a float32 ``out`` if one is given; bfloat16 with float32 is
    promoted to a float32 product; more than 2-D refused (bfloat16's char 'E' sends it to the
    integer kernels: batched bfloat16 products are broken in CuPy 14)."""
    if kwargs:
        raise TypeError(f"the stand-in's bfloat16 matmul takes no {', '.join(kwargs)}")
    if a.ndim > 2 or b.ndim > 2:
        raise TypeError(f"batched bfloat16 matmul ({a.shape} @ {b.shape}) is broken in CuPy 14: use 2-D products")
    dtype = np.promote_types(a.dtype, b.dtype)
    if dtype == fake_cupy.BFLOAT16:
        _ACTIVITY.bfloat16_product()
    c = np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(dtype)
    if out is None:
        return c
    out = out[0] if isinstance(out, tuple) else out
    if out.shape != c.shape:
        raise ValueError(f"Output array has an invalid size: {out.shape}, product {c.shape}")
    out[...] = c
    return out


# ----------------------------------------------------------------------------- module functions

def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    """cupy.asarray: ``a`` itself when it is a device array of that dtype, else a device copy."""
    return array(a, dtype=dtype, copy=copy, order=order)


def asanyarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    return array(a, dtype=dtype, copy=copy, order=order)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    """cupy.array: host data (arrays, lists, scalars) copied to the device; device arrays kept or
    cast; a list of device arrays stacked on the device."""
    if isinstance(obj, ndarray):
        if copy is False and dtype is not None and np.dtype(dtype) != obj.dtype:
            raise ValueError("Unable to avoid copy while creating an array as requested.")
        if not copy and (dtype is None or np.dtype(dtype) == obj.dtype) and ndmin <= obj.ndim:
            return obj
        host = _host_view(obj)
        return _run(lambda: _np["array"](host, dtype=dtype, order=order or "K", ndmin=ndmin))
    if copy is False:
        raise ValueError("Unable to avoid copy while creating an array as requested.")
    _refuse_while_capturing("a copy from pageable host memory")
    host = _np["array"](_to_host_arg(obj, "cupy.array") if _holds_device(obj) else obj,
                        dtype=dtype, order=order or "K", ndmin=ndmin)
    if host.dtype == object:
        raise ValueError("Unsupported dtype object")
    return _device(host)


def ascontiguousarray(a, dtype=None):
    """cupy.ascontiguousarray: ``a`` must be a device array (core.pyx types it _ndarray_base)."""
    if not isinstance(a, ndarray):
        raise TypeError("Argument 'a' has incorrect type (expected cupy._core.core._ndarray_base, "
                        f"got {type(a).__name__})")
    if a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    host = _host_view(a)
    return _run(lambda: _np["ascontiguousarray"](host, dtype=dtype))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    """cupy.asnumpy: ``a.get()`` for a device array, numpy.asarray for anything else."""
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    if _holds_device(a):
        raise TypeError(_IMPLICIT)
    temp = _np["asarray"](a, order=order)
    if out is None:
        return temp
    out[...] = temp
    return out


def get_array_module(*args):
    """cupy.get_array_module: the installed stand-in when any argument is a device array, else numpy."""
    return sys.modules["cupy"] if any(isinstance(a, ndarray) for a in args) else np


class ufunc:
    """A cupy ufunc (``cupy.exp``, ``cupy.maximum``): device operands only, results on the device."""

    def __init__(self, numpy_ufunc):
        self._ufunc = numpy_ufunc
        self.__name__ = numpy_ufunc.__name__

    def __getattr__(self, name):  # nin, nout, nargs, types, identity
        if name == "_ufunc":
            raise AttributeError(name)
        return getattr(self._ufunc, name)

    def __repr__(self):
        return f"<ufunc 'cupy.{self.__name__}'>"

    def __call__(self, *args, **kwargs):
        return self._run("__call__", args, kwargs)

    def reduce(self, *args, **kwargs):
        return self._run("reduce", args, kwargs)

    def accumulate(self, *args, **kwargs):
        return self._run("accumulate", args, kwargs)

    def outer(self, *args, **kwargs):
        return self._run("outer", args, kwargs)

    def at(self, *args, **kwargs):
        return self._run("at", args, kwargs)

    def _run(self, method, args, kwargs):
        out = kwargs.get("out")
        if out is not None and not isinstance(out, tuple):
            kwargs = {**kwargs, "out": (out,)}
        for x in list(args) + list(kwargs.get("out") or ()):
            if _is_host(x):
                raise TypeError(f"{_UNSUPPORTED} (cupy.{self.__name__})")
        result = _apply_ufunc(self._ufunc, method, args, kwargs)
        if result is NotImplemented:
            raise TypeError(f"cupy.{self.__name__}: operand types are not supported")
        return result


def _wrap_function(name: str, function):
    """A NumPy function as CuPy's: host arrays refused, results on the device."""

    @functools.wraps(function)
    def cupy_function(*args, **kwargs):
        where = f"cupy.{name}"
        if name in _CUBLAS_FUNCTIONS:
            refuse_cublas()
        compute = _product(function, _is_tf32(args)) if name in _GEMM_FUNCTIONS else function
        host_args = _to_host_arg(args, where)
        host_kwargs = {k: _to_host_arg(v, where) for k, v in kwargs.items()}
        out = kwargs.get("out")
        if out is not None and name not in _NO_LAUNCH:  # CuPy writes into out and returns out itself
            del host_kwargs["out"]
            return _run(lambda: _into_shape_of(out, compute(*host_args, **host_kwargs), where), out=(out,))
        if name not in _NO_LAUNCH:
            return _run(lambda: compute(*host_args, **host_kwargs))
        result = function(*host_args, **host_kwargs)
        if name in ("empty", "empty_like") and _capturing() is not None:
            return _poisoned(result)  # memory the graph has not written yet: garbage
        return _device(result)

    cupy_function.__module__ = "cupy"
    return cupy_function


def _into_shape_of(out, result, where: str):
    """``result`` when its shape and dtype are ``out``'s, else the ValueError or TypeError CuPy's
    functions raise for such an out (cupy.take: cupy/_core/_routines_indexing.pyx ``_take``)
    (stricter than NumPy's, which casts)."""
    if result.shape != out.shape:
        raise ValueError(f"{where}: out has shape {out.shape}, the result {result.shape}")
    if result.dtype != out.dtype:
        raise TypeError(f"{where}: out has dtype {out.dtype}, the result {result.dtype}")
    return result


# ----------------------------------------------------------------------------- kernels

def _kernel_args(args, where: str):
    """The arguments of an Elementwise or ReductionKernel as host views; anything but a device
    array, a host array (refused by _to_host_arg) or a Python or NumPy scalar raises TypeError, as
    CuPy's CScalar does (_kernel.pyx _preprocess_arg): a list is not taken as its one value."""
    for a in args:
        if not isinstance(a, (ndarray, np.ndarray, bool, int, float, complex, np.generic)):
            raise TypeError(f"Unsupported type {type(a)} ({where} takes device arrays and scalars)")
    return [_to_host_arg(a, where) for a in args]


class ElementwiseKernel:
    """cupy.ElementwiseKernel: tests/fake_cupy.py's, taking device arrays and refusing host ones."""

    def __init__(self, *args, **kwargs):
        self._kernel = fake_cupy.ElementwiseKernel(*args, **kwargs)
        self.name = kwargs.get("name", args[3] if len(args) > 3 else "kernel")

    def __call__(self, *args, **kwargs):
        host = _kernel_args(args, f"ElementwiseKernel {self.name}")
        return _run_in_place(lambda h: self._kernel(*h, **kwargs), host, args)  # CuPy returns the outputs passed


class ReductionKernel:
    """cupy.ReductionKernel: tests/fake_cupy.py's, taking device arrays and refusing host ones."""

    def __init__(self, *args, **kwargs):
        self._kernel = fake_cupy.ReductionKernel(*args, **kwargs)
        self.name = kwargs.get("name", args[6] if len(args) > 6 else "reduce_kernel")

    def __call__(self, *args, **kwargs):
        host = _kernel_args(args, f"ReductionKernel {self.name}")
        if "out" in kwargs:
            raise NotImplementedError("the CuPy stand-in's ReductionKernel takes no out=")
        return _run(lambda: self._kernel(*host, **kwargs))


class RawModule:
    """cupy.RawModule: tests/fake_cuda_threads.py's, whose kernels take device arrays."""

    def __init__(self, *, code: str, options: tuple = (), **kwargs):
        self._module = fake_cupy.RawModule(code=code, options=options, **kwargs)

    def get_function(self, name: str) -> "RawKernel":
        return RawKernel(self._module.get_function(name))


class RawKernel:
    """One kernel of a RawModule. A host array of size one goes by value, as CuPy passes it; a
    larger one raises TypeError (cupy/cuda/function.pyx ``_pointer``)."""

    def __init__(self, kernel):
        self._kernel = kernel

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        host = []
        for a in args:
            if _is_host(a):
                if a.size != 1:
                    raise TypeError(f"You are trying to pass a numpy.ndarray of shape {a.shape} as a kernel "
                                    "parameter. Only numpy.ndarrays of size one can be passed by value.")
                a = a.reshape(-1)[0]
            host.append(_host_view(a) if isinstance(a, ndarray) else a)
        _run_in_place(lambda h: self._kernel(grid, block, tuple(h), shared_mem=shared_mem, stream=stream), host, args)


# ----------------------------------------------------------------------------- cupy.cuda

class CUBLASError(RuntimeError):
    """cupy_backends.cuda.libs.cublas.CUBLASError: a cuBLAS call CuPy made returned ``status``."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


class CUDARuntimeError(RuntimeError):
    """cupy_backends.cuda.api.runtime.CUDARuntimeError: made from ``status`` alone, as CuPy's is
    (runtime.pyx; its message is the status's name and CUDA's text of it); the stand-in's own
    raises add what happened in ``message``, a keyword CuPy's has not."""

    def __init__(self, status: int, *, message: str | None = None):
        self.status = status
        super().__init__(message or f"CUDA runtime error {status}")


class PinnedMemoryPointer(bytearray):
    """cupy.cuda.PinnedMemoryPointer: page-locked host memory, a buffer NumPy arrays are made on
    (``numpy.ndarray(shape, dtype, buffer=pointer)``, as ``cupyx.empty_pinned`` does;
    cupy/cuda/pinned_memory.pyx). A host array on it is "pinned" to :meth:`ndarray.set`."""

    def __init__(self, size: int):
        super().__init__(int(size))
        self.ptr = id(self)

    def size(self) -> int:
        return len(self)


def alloc_pinned_memory(size: int) -> PinnedMemoryPointer:
    """cupy.cuda.alloc_pinned_memory: ``size`` bytes of pinned memory (counted in ``cupy.pinned``);
    past ``cupy.streams.pinned_capacity`` bytes in all, the CUDARuntimeError that CuPy's pinned
    pool lets out (cupy/cuda/pinned_memory.pyx: cudaHostAlloc's cudaErrorMemoryAllocation)."""
    capacity = _STREAMS.pinned_capacity
    if capacity is not None and sum(map(len, _STREAMS.pinned_live.values())) + int(size) > capacity:
        raise CUDARuntimeError(2, message="cudaErrorMemoryAllocation: out of memory")
    pointer = PinnedMemoryPointer(size)
    _STREAMS.pinned_live[pointer.ptr] = pointer
    _STREAMS.pinned.append(int(size))
    return pointer


def _is_pinned(a: np.ndarray) -> bool:
    while isinstance(a, np.ndarray):
        a = a.base
    return isinstance(a, PinnedMemoryPointer)


class PinnedCopyRace(RuntimeError):
    """The host wrote a pinned buffer while a copy out of it might still run (see :class:`Stream`)."""


class _StreamState:
    """The current-stream stack (``with stream:``), the copies out of pinned memory that the host
    has not yet seen finish, and the sizes of the pinned allocations."""

    def __init__(self):
        self.current: list = []
        self.in_flight: list = []  # (stream, op number, source view, bytes when queued)
        self.pinned: list[int] = []
        self.pinned_capacity: int | None = None  # bytes of page-locked memory the host gives (None: no limit)
        self.pinned_live = weakref.WeakValueDictionary()  # ptr -> pinned buffer still referenced (counted against it)
        self.deferred = weakref.WeakSet()  # the non_blocking streams
        self.by_ptr = weakref.WeakValueDictionary()  # stream handle -> Stream (FakeCublas's SetStream)
        self.events = weakref.WeakValueDictionary()  # event handle -> Event (runtime.eventElapsedTime)
        self.host_waits = 0  # times the host waited for the device (a synchronize, a host read)

    def check(self) -> None:
        for stream, number, source, snapshot in self.in_flight:
            if not np.array_equal(source, snapshot):
                raise PinnedCopyRace(
                    f"a pinned host buffer {source.shape} was written while its copy #{number} on {stream!r} "
                    "might still be running: synchronize an event recorded after the copy first (on a GPU the "
                    "copy would send whatever bytes are there when the DMA engine reads them)")

    def observed(self, stream, upto: int) -> None:
        """The host has seen ``stream``'s first ``upto`` ops finish: their sources are free."""
        self.check()
        self.host_waits += 1
        self.in_flight = [e for e in self.in_flight if not (e[0] is stream and e[1] < upto)]


_STREAMS = _StreamState()  # of the stand-in installed now (install() replaces it)

# ----------------------------------------------------------------------------- stream capture

CUBLAS_HANDLE = 0x7E57  # cupy.cuda.device.get_cublas_handle() (tests/fake_cublas.py's handle)
CUBLAS_REFUSED = "calling cuBLAS API during stream capture is currently unsupported"  # cublas.pyx setStream
CAPTURE_UNSUPPORTED, CAPTURE_INVALIDATED = 900, 901  # cudaErrorStreamCaptureUnsupported, ...Invalidated
CAPTURE_GLOBAL, CAPTURE_THREAD_LOCAL, CAPTURE_RELAXED = 0, 1, 2  # cudaStreamCaptureMode


class _Capture:
    """What a stream captures: the recorded operations (callables that run one each), and why
    the capture was invalidated, if it was."""

    def __init__(self, mode: int):
        self.ops: list = []
        self.invalid: str | None = None
        self.mode = mode


def _capturing() -> _Capture | None:
    """The capture of the current stream, or None."""
    return getattr(get_current_stream(), "capture", None)


def _refuse_while_capturing(what: str) -> None:
    """``what`` (a host sync, a pageable copy, a cudaMalloc) is refused while the current stream
    captures, and invalidates that capture; and from any stream while another captures in global
    or thread-local mode (CUDA's "potentially unsafe API calls"; the stand-in is one thread)."""
    capture = _capturing()
    if capture is not None:
        capture.invalid = capture.invalid or what
    strict = [s for s in list(_STREAMS.by_ptr.values()) if s.capture is not None and s.capture.mode != CAPTURE_RELAXED]
    if capture is not None or strict:
        raise CUDARuntimeError(CAPTURE_UNSUPPORTED, message=f"cudaErrorStreamCaptureUnsupported: operation not "
                                                    f"permitted when stream is capturing ({what})")


def activity() -> Activity:
    """The installed stand-in's Activity (``cupy.activity``)."""
    return _ACTIVITY


def refuse_cublas() -> None:
    if _capturing() is not None:
        raise NotImplementedError(CUBLAS_REFUSED)


_NEW_OUTPUT: list = []  # the memory of the captured output being made (ndarray.__array_finalize__)


def _poisoned(result):
    """A new device array holding ``result``'s shape and dtype and garbage: what a captured
    operation's output holds before the graph runs (NaN; the most negative, or largest unsigned,
    integer; True).

    Its memory is a plain array, which the recorded operations hold (through :func:`_host_view`),
    and the allocation is the device array made on it: when the program drops that array, its
    block goes back to the pool while the graph still writes the memory, as on a card, where a
    later allocation in the same capture may reuse the block."""
    memory = _np["array"](result)
    if memory.dtype.kind in "fc" or memory.dtype == fake_cupy.BFLOAT16:
        memory[...] = np.nan
    elif memory.dtype.kind in "iu":
        memory[...] = np.iinfo(memory.dtype).min if memory.dtype.kind == "i" else np.iinfo(memory.dtype).max
    elif memory.dtype.kind == "b":
        memory[...] = True
    _NEW_OUTPUT.append(memory)
    try:
        a = memory.view(ndarray)
    finally:
        _NEW_OUTPUT.pop()
    owners = _MEMORY.owners
    owners[id(memory)] = weakref.ref(a)
    weakref.finalize(a, owners.pop, id(memory), None).atexit = False
    return a


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _run(compute, out=None):
    """A device operation: ``compute()`` gives its NumPy result (reading device memory, writing
    none), written into ``out`` (a tuple of device arrays) or returned as new device array(s).
    While the current stream captures, it is recorded instead (run by each launch of the graph)
    and new outputs are poisoned."""
    capture = _capturing()
    if capture is None:
        _ACTIVITY.launch()
        result = compute()
        if out is None:
            return _device(result)
        _write(out, result)
        return out[0] if len(out) == 1 else out
    result = compute()  # the shapes of new outputs; the values are thrown away
    if out is None:
        new = tuple(_poisoned(r) for r in result) if isinstance(result, tuple) else (_poisoned(result),)
        memory = tuple(map(_host_view, new))
        capture.ops.append(lambda: _write(memory, compute()))
        return new if isinstance(result, tuple) else new[0]
    targets = tuple(map(_host_view, out))
    capture.ops.append(lambda: _write(targets, compute()))
    return out[0] if len(out) == 1 else out


def _run_write(op) -> None:
    """``op()``, a device operation that writes memory in place (a fill, a copy into a view, a
    scatter): recorded while the current stream captures, else run now as one launch."""
    capture = _capturing()
    if capture is not None:
        capture.ops.append(op)
        return
    _ACTIVITY.launch()
    op()


def _write(targets: tuple, result) -> None:
    """Write ``result`` (one value or a tuple) into ``targets`` (device arrays or host views)."""
    results = result if isinstance(result, tuple) else (result,)
    for target, value in zip(targets, results, strict=True):
        np.ndarray.__setitem__(_host_view(target), Ellipsis, value)


def _run_in_place(kernel, host: list, args: tuple):
    """A kernel that writes into its array arguments (and may return new arrays), run or
    recorded as :func:`_run` does: recorded, it runs on copies of the arguments at each graph
    launch and writes back the arguments it changed. Returns what the kernel returns, with the
    arguments' host views mapped back to the device arrays passed."""
    by_id = {id(h): a for h, a in zip(host, args)}
    capture = _capturing()
    if capture is None:
        _ACTIVITY.launch()
        result = kernel(host)
        if isinstance(result, tuple):
            return tuple(by_id[id(r)] if id(r) in by_id else _device(r) for r in result)
        return None if result is None else by_id.get(id(result), _device(result))
    arrays = [i for i, h in enumerate(host) if isinstance(h, np.ndarray)]

    def on_copies():
        copies = list(host)
        for i in arrays:
            copies[i] = _np["array"](host[i], copy=True)
        return copies, kernel(copies)

    copies, result = on_copies()
    results = result if isinstance(result, tuple) else (() if result is None else (result,))
    passed = [next((i for i in arrays if r is copies[i]), None) for r in results]
    new = [None if i is not None else _poisoned(r) for i, r in zip(passed, results)]
    memory = [None if n is None else _host_view(n) for n in new]

    def replay():
        copies, result = on_copies()
        for i in arrays:
            if not _same(copies[i], host[i]):
                host[i][...] = copies[i]
        for target, value in zip(memory, result if isinstance(result, tuple) else (result,)):
            if target is not None:
                _write((target,), value)

    capture.ops.append(replay)
    mapped = tuple(args[i] if i is not None else n for i, n in zip(passed, new))
    return mapped if isinstance(result, tuple) else (mapped[0] if mapped else None)


def stream_by_ptr(ptr: int):
    """The live stream whose handle is ``ptr`` (0: the null stream), or None."""
    return _STREAMS.by_ptr.get(ptr)


def run_on(stream_ptr: int, op) -> None:
    """``op()``, a library's operation (FakeCublas's gemm) issued to the stream of ``stream_ptr``:
    recorded while that stream captures, else run now as one launch."""
    stream = stream_by_ptr(stream_ptr)
    if stream is None:
        raise ValueError(f"no stream has the handle {stream_ptr:#x}")
    if stream.capture is not None:
        stream.capture.ops.append(op)
        return
    if stream.queue:
        stream.run_until(stream.issued)
    _ACTIVITY.launches += 1
    op()


def device_matrix(ptr: int, rows: int, cols: int, ld: int, dtype) -> np.ndarray | None:
    """The column-major (rows, cols) matrix of ``dtype`` at device address ``ptr`` with leading
    dimension ld, as a NumPy view of the live device buffer holding all of it; None where no live
    buffer holds it (a library would read or write outside the allocation)."""
    itemsize = np.dtype(dtype).itemsize
    extent = ((rows - 1) + (cols - 1) * ld + 1) * itemsize if rows and cols else 0
    found = _MEMORY.resolve(ptr, extent)
    if found is None:
        return None
    root, offset = found
    return np.ndarray((rows, cols), dtype, buffer=_host_view(root), offset=offset, strides=(itemsize, ld * itemsize))


class Graph:
    """cupy.cuda.Graph from ``Stream.end_capture``: ``launch(stream=None)`` runs the recorded
    operations in order, reading their inputs as they are then; one launch."""

    def __init__(self, ops: list):
        self._ops = ops

    def launch(self, stream=None) -> None:
        """Run the graph on ``stream`` (the current one if None), after the work queued on it."""
        stream = get_current_stream() if stream is None else stream
        if stream.capture is not None or _capturing() is not None:
            raise NotImplementedError("the CuPy stand-in does not model a graph launched into a capture")
        if stream.queue:
            stream.run_until(stream.issued)
        _ACTIVITY.launches += 1
        for op in self._ops:
            op()

    def upload(self, stream=None) -> None:
        pass


class Stream:
    """cupy.cuda.Stream (cupy/cuda/stream.pyx): ``null``, ``non_blocking``, ``with stream:``,
    ``use``, ``synchronize``, ``done``, ``record``, ``wait_event``, ``ptr``, ``device_id``.

    The null stream, and any stream not created ``non_blocking`` (it synchronizes with the null
    stream), runs what it is given at once, as every computation of the stand-in does. A
    ``non_blocking`` stream queues what is given to it -- ``ndarray.set(arr, stream=s)`` -- and
    runs it only when it must: when the host synchronizes it or an event recorded after the work,
    or asks ``done``, or when another stream waits for such an event (``wait_event``: on the null
    stream at once, on a side stream when that stream runs). So a device buffer read before its
    copy was waited for holds its old contents, as it may on a card. A copy from pageable memory
    takes the bytes when queued (CUDA stages them); a copy from pinned memory takes them when it
    runs, and until the host has seen it finish (synchronize, ``done``) writing that pinned buffer
    raises :class:`PinnedCopyRace` at the next stream or event call: stricter than CuPy, which
    copies whatever bytes are there, on purpose.
    """

    null = None
    _count = 0

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        Stream._count += 1
        self.ptr = 0 if null else Stream._count
        self.device_id = -1 if null or ptds else 0
        self.deferred = bool(non_blocking) and not null and not ptds
        self.queue: list = []  # ops not run yet
        _STREAMS.by_ptr[self.ptr] = self
        self.issued = 0  # ops ever given to this stream
        self.ran = 0
        if self.deferred:
            _STREAMS.deferred.add(self)

    def __eq__(self, other):
        return isinstance(other, Stream) and self.ptr == other.ptr

    def __hash__(self):
        return self.ptr

    def __repr__(self):
        return f"<Stream {self.ptr} (device {self.device_id})>"

    def __enter__(self):
        _STREAMS.current.append(self)
        return self

    def __exit__(self, *exc):
        _STREAMS.current.pop()

    def use(self):
        _STREAMS.current[:] = [self]
        return self

    capture: _Capture | None = None

    def begin_capture(self, mode=None) -> None:
        """Start capturing in ``mode`` (``runtime.streamCaptureMode*``; None: relaxed, as CuPy
        does; cupy/cuda/stream.pyx ``begin_capture``). The null stream raises CuPy's RuntimeError;
        a stream that synchronizes with it raises cudaErrorStreamCaptureImplicit (stricter than
        CUDA, which fails at the legacy stream's next use instead); a stream already capturing
        raises too. The work queued on the stream before runs first, outside the capture."""
        if self.ptr == 0:
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if not self.deferred:
            raise CUDARuntimeError(906, message="cudaErrorStreamCaptureImplicit: operation would make the legacy "
                                        "stream depend on a capturing blocking stream")
        if self.capture is not None:
            raise CUDARuntimeError(CAPTURE_UNSUPPORTED, message="cudaErrorIllegalState: the stream is already capturing")
        mode = CAPTURE_RELAXED if mode is None else int(mode)
        if mode not in (CAPTURE_GLOBAL, CAPTURE_THREAD_LOCAL, CAPTURE_RELAXED):
            raise CUDARuntimeError(1, message=f"cudaErrorInvalidValue: capture mode {mode}")
        self.run_until(self.issued)
        self.capture = _Capture(mode)

    def end_capture(self) -> Graph:
        """Stop capturing; the Graph of what was recorded, or CUDARuntimeError if the capture
        was invalidated (an operation refused while capturing)."""
        if self.capture is None:
            raise CUDARuntimeError(CAPTURE_UNSUPPORTED, message="cudaErrorIllegalState: the stream is not capturing")
        capture, self.capture = self.capture, None
        if capture.invalid:
            raise CUDARuntimeError(CAPTURE_INVALIDATED, message="cudaErrorStreamCaptureInvalidated: the capture was "
                                                        f"invalidated by {capture.invalid}")
        return Graph(capture.ops)

    def is_capturing(self) -> bool:
        return self.capture is not None

    def is_non_blocking(self) -> bool:
        return self.deferred

    def submit(self, op) -> None:
        """Run ``op`` now, or queue it on a non_blocking stream."""
        self.issued += 1
        if self.deferred:
            self.queue.append(op)
        else:
            self.ran += 1
            op()

    def run_until(self, upto: int) -> None:
        """Run the queued ops up to op number ``upto`` (exclusive), in order."""
        while self.ran < upto:
            op = self.queue.pop(0)
            self.ran += 1
            op()

    def synchronize(self) -> None:
        if self.capture is not None:
            self.capture.invalid = self.capture.invalid or "a stream synchronize"
            raise CUDARuntimeError(CAPTURE_UNSUPPORTED, message="cudaErrorStreamCaptureUnsupported: operation not "
                                                        "permitted when stream is capturing")
        self.run_until(self.issued)
        _STREAMS.observed(self, self.issued)

    @property
    def done(self) -> bool:
        self.synchronize()
        return True

    def record(self, event=None):
        event = Event() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event) -> None:
        _STREAMS.check()
        if event.stream is not None and event.stream is not self:
            stream, upto = event.stream, event.mark
            self.submit(lambda: stream.run_until(upto))


class Event:
    """cupy.cuda.Event: ``record(stream=None)`` marks the work queued so far on the stream (the
    current one by default); ``synchronize()`` and ``done`` run it and let the host see it done.
    An event never recorded is done, as in CUDA. A timing event (not ``disable_timing``) keeps the
    host's clock at its record, for :func:`get_elapsed_time`."""

    _count = 0

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        if interprocess and not disable_timing:
            raise ValueError("Timing must be disabled for interprocess events")
        Event._count += 1
        self.ptr = Event._count
        self.stream, self.mark = None, 0
        self.timing = not disable_timing
        self.recorded_at: float | None = None  # time.perf_counter() at the last record
        self.waits_at_record = 0  # _STREAMS.host_waits then
        _STREAMS.events[self.ptr] = self

    def record(self, stream=None) -> None:
        _STREAMS.check()
        self.stream = get_current_stream() if stream is None else stream
        self.mark = self.stream.issued
        self.recorded_at, self.waits_at_record = time.perf_counter(), _STREAMS.host_waits

    def synchronize(self) -> None:
        if self.stream is not None and self.stream.capture is not None:
            self.stream.synchronize()  # refused: the host cannot wait inside a capture
        if self.stream is not None:
            self.stream.run_until(self.mark)
            _STREAMS.observed(self.stream, self.mark)

    @property
    def done(self) -> bool:
        self.synchronize()
        return True


def event_elapsed_time(start_ptr: int, end_ptr: int) -> float:
    """runtime.eventElapsedTime (cupy_backends/cuda/api/runtime.pyx of v14.2.0, ``cpdef float
    eventElapsedTime(intptr_t start, intptr_t end)``): milliseconds from the start event's record
    to the end event's, a float, or cudaEventElapsedTime's errors: an event never recorded or made
    with ``disable_timing`` cudaErrorInvalidResourceHandle (400), an end event the host has not
    waited for since its record cudaErrorNotReady (600). Stricter than a card, where a short
    enough piece of work may have finished unwaited: any host wait after the record counts (an
    event's or a stream's synchronize, a device synchronize, a host read of device memory)."""
    start, end = _STREAMS.events.get(start_ptr), _STREAMS.events.get(end_ptr)
    for event in (start, end):
        if event is None or event.recorded_at is None or not event.timing:
            raise CUDARuntimeError(400, message="cudaErrorInvalidResourceHandle: invalid resource handle")
    if _STREAMS.host_waits <= end.waits_at_record:
        raise CUDARuntimeError(600, message="cudaErrorNotReady: device not ready")
    return float(np.float32(1e3 * (end.recorded_at - start.recorded_at)))


def get_elapsed_time(start_event: Event, end_event: Event) -> float:
    """cupy.cuda.get_elapsed_time (cupy/cuda/stream.pyx of v14.2.0):
    ``runtime.eventElapsedTime(start_event.ptr, end_event.ptr)``, in milliseconds."""
    return event_elapsed_time(start_event.ptr, end_event.ptr)


def get_current_stream(device_id=-1) -> Stream:
    """cupy.cuda.get_current_stream: the innermost ``with stream:``, else the null stream."""
    return _STREAMS.current[-1] if _STREAMS.current else Stream.null


def _copy_to_device(target: np.ndarray, arr: np.ndarray, stream) -> None:
    """``target[...] = arr`` on ``stream`` (the current one if None), as ``ndarray.set`` does."""
    stream = get_current_stream() if stream is None else stream
    _STREAMS.check()
    pinned = _is_pinned(arr) and arr.flags.c_contiguous
    if stream.capture is not None:
        if not pinned:
            _refuse_while_capturing("a copy from pageable host memory")
        raise NotImplementedError("the CuPy stand-in does not model a pinned copy under stream capture")
    source = arr if pinned else _np["array"](arr, copy=True)  # pageable memory is staged at once
    if pinned and stream.deferred:
        _STREAMS.in_flight.append((stream, stream.issued, arr, _np["array"](arr, copy=True)))

    def copy():
        target[...] = source

    stream.submit(copy)


def _synchronize_all() -> None:
    """cudaDeviceSynchronize: every queued op of every stream runs (the host sees them done)."""
    _STREAMS.host_waits += 1
    for stream in list(_STREAMS.deferred):
        stream.synchronize()


class MemoryPointer:
    """cupy.cuda.MemoryPointer (cupy/cuda/memory.pyx of v14.2.0) at device address ``ptr``, as
    ``ndarray.data`` gives it: ``ptr``, ``device_id`` and the asynchronous device-to-device copy.
    Not modelled (so any use fails): ``mem``, offsets (``+``), the synchronous copies (CuPy's run on
    the legacy default stream, not the current one), copies from and to the host, memset."""

    def __init__(self, ptr: int):
        self.ptr, self.device_id = int(ptr), 0

    def __int__(self):
        return self.ptr

    def copy_from_device_async(self, src: "MemoryPointer", size: int, stream=None) -> None:
        """``cpdef copy_from_device_async(self, MemoryPointer src, size_t size, stream=None)``:
        ``size`` bytes from ``src`` on ``stream`` (None: the current stream), one launch. A
        pointer whose ``size`` bytes no live device buffer holds raises cudaErrorInvalidValue."""
        if not isinstance(src, MemoryPointer):
            raise TypeError("Argument 'src' has incorrect type (expected cupy.cuda.memory.MemoryPointer, "
                            f"got {type(src).__name__})")
        if int(size) < 0:
            raise OverflowError("can't convert negative value to size_t")
        stream = get_current_stream() if stream is None else stream
        if stream.capture is not None:
            raise NotImplementedError("the CuPy stand-in does not model a device copy under stream capture")
        if not size:
            return
        target, source = _device_bytes(self.ptr, int(size)), _device_bytes(src.ptr, int(size))
        _ACTIVITY.launches += 1
        stream.submit(lambda: np.copyto(target, source))


def _device_bytes(ptr: int, size: int) -> np.ndarray:
    """The ``size`` bytes at device address ``ptr``, as a view of the live buffer holding them."""
    found = _MEMORY.resolve(ptr, size)
    if found is None:
        raise CUDARuntimeError(1, message=f"cudaErrorInvalidValue: no device buffer holds {size} bytes at {ptr:#x}")
    root, offset = found
    return np.ndarray((size,), np.uint8, buffer=_host_view(root), offset=offset)


class Device:
    """cupy.cuda.Device: the stand-in has device 0 only."""

    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise CUDARuntimeError(101, message="cudaErrorInvalidDevice: invalid device ordinal")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def use(self) -> None:
        pass

    def synchronize(self) -> None:
        _synchronize_all()

    @property
    def mem_info(self) -> tuple[int, int]:
        return _runtime_mem_get_info()

    @property
    def compute_capability(self) -> str:
        return "90"

    @property
    def pci_bus_id(self) -> str:
        """runtime.deviceGetPCIBusId's "domain:bus:device.function" of the one card."""
        return "0000:41:00.0"


def _check_device(i: int) -> None:
    if int(i) != 0:
        raise CUDARuntimeError(101, message="cudaErrorInvalidDevice: invalid device ordinal")


def _runtime_mem_get_info() -> tuple[int, int]:
    return _MEMORY.capacity - _MEMORY.total_bytes(), _MEMORY.capacity


def _device_properties(i: int) -> dict:
    _check_device(i)
    return {"name": b"gpubp CuPy stand-in (NumPy)", "totalGlobalMem": _MEMORY.capacity, "major": 9,
            "minor": 0, "multiProcessorCount": 132, "warpSize": 32, "maxThreadsPerBlock": 1024}


def _make_runtime() -> types.ModuleType:
    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.CUDARuntimeError = CUDARuntimeError
    runtime.errorMemoryAllocation = 2
    runtime.getDeviceCount = lambda: 1
    runtime.getDevice = lambda: 0
    runtime.setDevice = _check_device
    runtime.getDeviceProperties = _device_properties
    runtime.memGetInfo = _runtime_mem_get_info
    runtime.driverGetVersion = lambda: 13000
    runtime.runtimeGetVersion = lambda: 13000
    runtime.deviceSynchronize = _synchronize_all
    runtime.eventElapsedTime = event_elapsed_time
    runtime.streamCaptureModeGlobal, runtime.streamCaptureModeThreadLocal = CAPTURE_GLOBAL, CAPTURE_THREAD_LOCAL
    runtime.streamCaptureModeRelaxed = CAPTURE_RELAXED
    return runtime


def _nrm2(x, out=None):
    """cupy.cublas.nrm2 (cupy/cublas.py): a 1-D float32 or float64 device array's Euclidean norm
    as a new 0-d device array (pointer mode device: no sync), cuBLAS refused while capturing. The
    norm is taken in float64 and rounded once, as cuBLAS's scaled sum comes out without overflow."""
    if x.ndim != 1:
        raise ValueError(f"x must be a 1D array (actual: {x.ndim})")
    if x.dtype.char not in "fd":
        raise TypeError("invalid dtype")
    if not x.flags.c_contiguous:  # CuPy passes incx=1 whatever x's strides: a strided x gives a wrong norm
        raise NotImplementedError("the stand-in refuses a strided x: cupy.cublas.nrm2 would read it with stride 1")
    if out is not None:
        raise NotImplementedError("the stand-in models cupy.cublas.nrm2 without out")
    refuse_cublas()
    host = _to_host_arg(x, "cupy.cublas.nrm2")
    return _run(lambda: np.asarray(np.linalg.norm(host.astype(np.float64)), dtype=host.dtype))


class Generator:
    """cupy.random.Generator (cupy/random/_generator_api.pyx of v14.2.0), for what the device
    check draws: ``standard_normal`` and ``integers``, with CuPy's signatures and checks, each one
    launch giving a device array (0-d without ``size``). The values are NumPy's PCG64 draws from
    the same seed: CuPy's XORWOW draws others."""

    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        """float32 or float64 only, as CuPy: ``TypeError('Unsupported dtype ...')`` otherwise."""
        if out is not None:
            raise NotImplementedError("the CuPy stand-in's standard_normal takes no out=")
        dtype = np.dtype(dtype)
        if dtype.char not in "fd":
            raise TypeError(f"Unsupported dtype {dtype.name} for standard_normal")
        return _run(lambda: _np["asarray"](self._rng.standard_normal(() if size is None else size, dtype=dtype)))

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        """Integers of [low, high) ([0, low) without ``high``; ``endpoint`` closes it), as CuPy."""
        low, high = (0, int(low)) if high is None else (int(low), int(high))
        if low > high - (not endpoint):
            raise ValueError("low >= high")
        return _run(lambda: _np["asarray"](self._rng.integers(low, high, () if size is None else size, dtype=dtype,
                                                               endpoint=endpoint)))


def default_rng(seed=None) -> Generator:
    """cupy.random.default_rng (cupy/random/__init__.py of v14.2.0) for an integer seed or None."""
    return Generator(seed)


def _norm(x, ord=None, axis=None, keepdims=False):
    """cupy.linalg.norm in its default case (cupy/linalg/_norms.py of v14.2.0: ``axis`` and
    ``ord`` None): ``sqrt((x * x).sum())``, a 0-d device array, an x that is not inexact cast to
    float first; the other cases, and complex x, are not modelled."""
    if ord is not None or axis is not None or keepdims:
        raise NotImplementedError("the CuPy stand-in models cupy.linalg.norm(x) only")
    if not issubclass(x.dtype.type, np.inexact):
        x = x.astype(float)
    if x.dtype.kind == "c":
        raise NotImplementedError("the CuPy stand-in does not model cupy.linalg.norm of complex arrays")
    return np.sqrt((x * x).sum())


def _make_cuda() -> tuple[types.ModuleType, dict]:
    cuda = types.ModuleType("cupy.cuda")
    runtime = _make_runtime()
    memory = types.ModuleType("cupy.cuda.memory")
    memory.OutOfMemoryError = OutOfMemoryError
    memory.MemoryPool, memory.using_allocator, memory.MemoryPointer = UserMemoryPool, using_allocator, MemoryPointer
    device = types.ModuleType("cupy.cuda.device")
    device.get_cublas_handle = lambda: CUBLAS_HANDLE
    device.get_compute_capability = lambda: Device().compute_capability  # "90", a str as in CuPy
    from .fake_cublas import cupy_gemm_ex  # (fake_cublas imports this module)

    cublas = types.ModuleType("cupy.cuda.cublas")  # gemmEx (cublas_direct.matmul_into_float32) and the math mode
    cublas.gemmEx, cublas.CUBLASError = cupy_gemm_ex, CUBLASError
    cublas.getMathMode = lambda handle: _ACTIVITY.math_modes.get(handle, 0)
    cublas.getVersion = lambda handle: 130200  # cublasGetVersion: cuBLAS 13.2.0
    cublas.setMathMode = lambda handle, mode: _ACTIVITY.math_modes.__setitem__(handle, int(mode))
    compiler = types.ModuleType("cupy.cuda.compiler")
    compiler.CompileException = fake_nvrtc.CompileException
    nvrtc = types.ModuleType("cupy_backends.cuda.libs.nvrtc")  # cupy.cuda.nvrtc (cupy/cuda/__init__.py)
    nvrtc.getVersion = lambda: (13, 0)  # nvrtc.pyx: cpdef tuple getVersion(): (major, minor)
    Stream.null = Stream(null=True)
    cuda.runtime, cuda.memory, cuda.compiler, cuda.device, cuda.cublas = runtime, memory, compiler, device, cublas
    cuda.nvrtc, cuda.MemoryPointer, cuda.get_elapsed_time = nvrtc, MemoryPointer, get_elapsed_time
    cuda.MemoryPool, cuda.using_allocator, cuda.Graph = UserMemoryPool, using_allocator, Graph
    cuda.Device, cuda.Stream, cuda.Event = Device, Stream, Event
    cuda.get_current_stream = get_current_stream
    cuda.alloc_pinned_memory, cuda.PinnedMemoryPointer = alloc_pinned_memory, PinnedMemoryPointer
    cuda.is_available = lambda: True
    cuda.OutOfMemoryError = OutOfMemoryError
    submodules = {"cupy.cuda": cuda, "cupy.cuda.runtime": runtime, "cupy.cuda.memory": memory,
                  "cupy.cuda.compiler": compiler, "cupy.cuda.device": device, "cupy.cuda.cublas": cublas}
    return cuda, submodules


# ----------------------------------------------------------------------------- the module

class _CupyModule(types.ModuleType):
    """The ``cupy`` module: the names above, NumPy's dtypes and constants, and NumPy's functions
    and ufuncs made into CuPy's (host arrays refused, results on the device)."""

    def __getattr__(self, name):
        if name.startswith("__") or name in NOT_IN_CUPY or not hasattr(np, name):
            raise AttributeError(f"module 'cupy' has no attribute {name!r} (or the stand-in does not model it)")
        value = getattr(np, name)
        if isinstance(value, types.ModuleType):
            raise AttributeError(f"the CuPy stand-in does not model cupy.{name}")
        if isinstance(value, np.ufunc):
            value = ufunc(value)
        elif callable(value) and not isinstance(value, type):
            value = _wrap_function(name, value)
        setattr(self, name, value)  # dtypes (cupy.float32 is numpy.float32) and constants as they are
        return value


def make_module(memory: DeviceMemory) -> tuple[types.ModuleType, dict]:
    """A fresh ``cupy`` module over ``memory``, and its submodules by their sys.modules names."""
    global _MEMORY, _ACTIVITY, _STREAMS, _CORE
    _MEMORY, _ACTIVITY, _STREAMS = memory, Activity(), _StreamState()
    _CORE, linalg = fake_cupy_core.make_core(lambda: Device().compute_capability)
    _ALLOCATORS.clear()
    cupy = _CupyModule("cupy", __doc__)
    cuda, submodules = _make_cuda()
    pool, pinned = MemoryPool(memory), PinnedMemoryPool()
    cupy.__version__ = __version__
    cupy.__file__ = __file__
    cupy.ndarray, cupy.ufunc = ndarray, ufunc
    cupy.array, cupy.asarray, cupy.asanyarray = array, asarray, asanyarray
    cupy.ascontiguousarray, cupy.asnumpy = ascontiguousarray, asnumpy
    cupy.get_array_module = get_array_module
    cupy.ElementwiseKernel, cupy.ReductionKernel = ElementwiseKernel, ReductionKernel
    cupy.RawModule, cupy.RawKernel = RawModule, RawKernel
    cupy.cuda = cuda
    cupy._core = _CORE  # the compute types (set_compute_type): tests/fake_cupy_core.py
    submodules["cupy._core"], submodules["cupy._core._routines_linalg"] = _CORE, linalg
    cupy.cublas = types.ModuleType("cupy.cublas")  # (imported as cupy.cublas: not by import cupy)
    cupy.cublas.nrm2 = _nrm2
    submodules["cupy.cublas"] = cupy.cublas
    cupy.random = types.ModuleType("cupy.random")  # default_rng only (and its Generator)
    cupy.random.default_rng = default_rng
    cupy.linalg = types.ModuleType("cupy.linalg")  # norm only
    cupy.linalg.norm = _norm
    submodules["cupy.random"], submodules["cupy.linalg"] = cupy.random, cupy.linalg
    cupy.get_default_memory_pool = lambda: pool
    cupy.get_default_pinned_memory_pool = lambda: pinned
    cupy.is_available = lambda: True
    cupy.memory = memory  # the stand-in's own handle on the card's memory (CuPy has no such name)
    cupy.activity = _ACTIVITY  # and on its launches and syncs (likewise)
    cupy.pinned = _STREAMS.pinned  # and on the sizes of its pinned allocations (nor this one)
    cupy.streams = _STREAMS  # and on its streams and pinned_capacity (nor this one)
    return cupy, {"cupy": cupy, **submodules}


def _strict(name: str):
    real = _np[name]

    @functools.wraps(real)
    def conversion(obj, *args, **kwargs):
        if _holds_device(obj):
            raise TypeError(_IMPLICIT)
        return real(obj, *args, **kwargs)

    conversion.__wrapped__ = real
    return conversion


def install(monkeypatch, capacity: int = 80 * 2**30) -> types.ModuleType:
    """Install a fresh stand-in as ``cupy`` for one test, through ``monkeypatch``; returns it.

    Puts the module and its ``cupy.cuda*`` submodules in sys.modules (removing any ``cupyx``),
    makes numpy's conversions refuse device arrays, and forgets gpubp's memoized CUDA probe,
    backends and kernels, so they are built again from the stand-in. monkeypatch undoes all
    of it after the test; :func:`forget_gpubp_caches` must then run again (the fixture does).
    ``cupy.memory`` (a :class:`DeviceMemory`) sets the card's capacity and shows its use.
    """
    cupy, modules = make_module(DeviceMemory(capacity))
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in [m for m in sys.modules if m == "cupyx" or m.startswith("cupyx.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in _PATCHED:
        monkeypatch.setattr(np, name, _strict(name))
    forget_gpubp_caches()
    return cupy


def forget_gpubp_caches() -> None:
    """Clear every memoized probe, backend, kernel and cuBLAS workspace of gpubp.backend,
    gpubp.cublas_direct and gpubp.kernels."""
    from gpubp import backend, cublas_direct, kernels

    for value in [*vars(backend).values(), *vars(cublas_direct).values()]:
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()
    kernels.clear_cache()
