"""Choice of array library: NumPy on the CPU or CuPy on an NVIDIA GPU, and transfers between them.

This is the only module (with ``gpubp.kernels``) that imports cupy. Everything else receives the
array module as ``xp`` from a :class:`Backend` and writes the same code for both.

CuPy works on its *current* device (device 0 unless ``CUDA_VISIBLE_DEVICES`` or
``cupy.cuda.Device(i).use()`` says otherwise); gpubp does not pick among several GPUs itself.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .errors import BackendUnavailableError
from .host_kernels import CPU_KERNELS
from .kernel_set import KernelSet, check_kernel_set
from .kernels import CUDA_KERNELS

_ALIASES = {
    "auto": "auto",
    "cpu": "cpu",
    "numpy": "cpu",
    "cuda": "cuda",
    "gpu": "cuda",
    "cupy": "cuda",
}

# Share of the free GPU memory a training set may take before batches are sent from the host.
_DEVICE_DATA_SHARE = 0.5
_NORM_CHUNK = 2**30  # values per BLAS nrm2 call (its n is a 32-bit int)


@dataclass(frozen=True)
class CudaStatus:
    """Whether CuPy and a CUDA device are usable, and why not when they are not."""

    usable: bool
    reason: str
    cupy_version: str | None = None
    devices: tuple[str, ...] = ()


@functools.lru_cache(maxsize=1)
def cuda_status() -> CudaStatus:
    """Probe CuPy and the CUDA devices once; never raises.

    Returns
    -------
    CudaStatus
        ``usable`` is True when CuPy imports, at least one device answers, and a tiny kernel and
        a matrix product run correctly on the current one (so NVRTC, the CUDA headers and cuBLAS
        are found); ``reason`` says what was found or what failed.
    """
    try:
        import cupy
    except ImportError as exc:
        return CudaStatus(
            False,
            f"CuPy is not installed ({exc}); install gpubp[cuda12] or gpubp[cuda13] "
            "to match your CUDA driver",
        )
    except Exception as exc:  # a broken CuPy install raises all sorts of errors at import
        return CudaStatus(False, f"CuPy failed to import: {type(exc).__name__}: {exc}")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        devices = tuple(_device_name(cupy, i) for i in range(count))
    except Exception as exc:
        return CudaStatus(
            False,
            f"CuPy {cupy.__version__} imported but CUDA is unusable: {type(exc).__name__}: {exc}",
            cupy.__version__,
        )
    if count == 0:
        return CudaStatus(False, "CuPy imported but no CUDA device is visible", cupy.__version__)
    try:
        _run_probe(cupy)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        return CudaStatus(
            False,
            f"CuPy {cupy.__version__} sees {count} CUDA device(s) but cannot run work there "
            f"({type(exc).__name__}: {first_line}); install the CUDA libraries, e.g. "
            "gpubp[cuda13] brings cupy-cuda13x[ctk]",
            cupy.__version__,
            devices,
        )
    return CudaStatus(True, f"CuPy {cupy.__version__}, {count} CUDA device(s)", cupy.__version__, devices)


def _run_probe(cupy: ModuleType) -> None:
    """Compile and run one ElementwiseKernel (NVRTC, CUDA headers) and one product (cuBLAS)."""
    x = cupy.arange(4, dtype=cupy.float32).reshape(2, 2)  # [[0, 1], [2, 3]]
    doubled = cupy.empty_like(x)
    cupy.ElementwiseKernel("T x", "T y", "y = x + x", "gpubp_probe")(x, doubled)
    product = x @ x
    got = (doubled.get().tolist(), product.get().tolist())
    if got != ([[0, 2], [4, 6]], [[2, 3], [6, 11]]):
        raise RuntimeError(f"wrong results from the probe: {got}")


def _device_name(cupy: ModuleType, i: int) -> str:
    """'NVIDIA H100 80GB HBM3 (79.1 GiB)' for device i."""
    props = cupy.cuda.runtime.getDeviceProperties(i)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return f"{name} ({props['totalGlobalMem'] / 2**30:.1f} GiB)"


@dataclass(frozen=True, eq=False)
class Backend:
    """An array module plus the few operations that differ between host and device.

    Attributes
    ----------
    name : {"cpu", "cuda"}
    xp : module
        ``numpy`` or ``cupy``.
    device : str
        Human-readable description of where the arrays live.
    kernels : KernelSet
        Every array operation of a step and a prediction (gpubp.kernel_set): on "cuda"
        ``gpubp.kernels.CUDA_KERNELS``, the CUDA kernels; on "cpu" ``gpubp.host_kernels.CPU_KERNELS``,
        the NumPy twins with the optimizer updates compiled (gpubp.host_build). An incomplete set
        is refused with a ValueError naming what it lacks.
    """

    name: str
    xp: ModuleType
    device: str
    kernels: KernelSet

    def __post_init__(self):
        check_kernel_set(self.kernels)

    def asarray(self, a, dtype=None):
        """Array ``a`` (host or device, any backend) as an array of this backend, copied only when
        needed. Host data goes to the device straight from its own memory (CuPy's asarray would
        stage it through a pinned buffer that its pool keeps, rounded up to a power of two, for
        the life of the process)."""
        if self.name == "cpu":
            return np.asarray(to_numpy(a), dtype=dtype)
        if is_device_array(a):
            return self.xp.asarray(a, dtype=dtype)
        host = np.asarray(a, dtype=dtype)
        device = self.xp.empty(host.shape, dtype=host.dtype)
        device.set(host if host.flags.c_contiguous else host.copy())
        return device

    def to_host(self, a) -> np.ndarray:
        """Array ``a`` of this backend (or of NumPy) as a NumPy array."""
        return to_numpy(a)

    def fits(self, nbytes: int) -> bool:
        """Whether ``nbytes`` of data may be kept on this device (always True on the CPU)."""
        if self.name != "cuda":
            return True
        return nbytes <= _DEVICE_DATA_SHARE * self.free_memory()

    def free_memory(self) -> int | None:
        """Bytes that can still be allocated: free device memory plus CuPy's cached blocks on
        "cuda"; the kernel's MemAvailable on a Linux CPU; None where unknown."""
        if self.name == "cuda":
            free, _total = self.xp.cuda.runtime.memGetInfo()
            pool = self.xp.get_default_memory_pool()
            free += pool.free_bytes()
            limit = pool.get_limit()  # 0: none (CUPY_GPU_MEMORY_LIMIT or set_limit sets one)
            return min(free, limit - pool.total_bytes() + pool.free_bytes()) if limit else free
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def norm(self, x):
        """The Euclidean norm of array ``x`` (any shape and strides; float32 or float64), a 0-d
        array of x's dtype on x's device (no host sync), by BLAS nrm2 (cuBLAS on "cuda", SciPy's
        BLAS on "cpu"), which scales as it sums: a float32 norm past 1.8e19, whose sum of squares
        overflows, comes out finite. nrm2 counts in 32-bit ints, so 2^30 values at a time, then
        the norm of those norms."""
        flat = self.xp.ascontiguousarray(x).reshape(-1)  # (cuBLAS's nrm2 as CuPy calls it reads with stride 1)
        if flat.size > _NORM_CHUNK:
            return self.norm(self.xp.stack([self.norm(flat[i:i + _NORM_CHUNK])
                                            for i in range(0, flat.size, _NORM_CHUNK)]))
        if self.name == "cuda":
            import cupy.cublas

            return cupy.cublas.nrm2(flat)
        from scipy.linalg import blas

        nrm2 = blas.snrm2 if flat.dtype == np.float32 else blas.dnrm2
        return flat.dtype.type(nrm2(flat))

    def release_memory(self) -> None:
        """Hand CuPy's cached free blocks back to the device (after running out of memory)."""
        if self.name == "cuda":
            self.xp.get_default_memory_pool().free_all_blocks()

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {self.device!r})"


def is_device_array(a) -> bool:
    """Whether ``a`` is a CuPy (device) array."""
    return type(a).__module__.split(".")[0] == "cupy"


def to_numpy(a) -> np.ndarray:
    """Any array (NumPy, CuPy, or array-like) as a NumPy array on the host."""
    return a.get() if is_device_array(a) else np.asarray(a)


CUDA_ERROR_MEMORY_ALLOCATION = 2  # cudaErrorMemoryAllocation


def memory_failure(exc: BaseException) -> str | None:
    """Which memory an exception says ran out: "pinned" for CuPy's CUDARuntimeError of
    cudaErrorMemoryAllocation (cudaHostAlloc's page-locked host memory, which CuPy's pinned pool
    lets out as it is), "device" for NumPy's MemoryError and CuPy's OutOfMemoryError; else None."""
    if type(exc).__name__ == "CUDARuntimeError" and getattr(exc, "status", None) == CUDA_ERROR_MEMORY_ALLOCATION:
        return "pinned"
    return "device" if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" else None


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception means an allocation failed (:func:`memory_failure`)."""
    return memory_failure(exc) is not None


def backend_for(a) -> Backend:
    """The backend an array belongs to: "cuda" for a CuPy array, else "cpu"."""
    return _cuda_backend() if is_device_array(a) else _cpu_backend()


@functools.lru_cache(maxsize=None)
def _cpu_backend() -> Backend:
    cpu = platform.processor() or platform.machine() or "CPU"
    return Backend("cpu", np, f"cpu ({cpu}, NumPy {np.__version__})", CPU_KERNELS)


@functools.lru_cache(maxsize=None)
def _cuda_backend() -> Backend:
    status = cuda_status()
    if not status.usable:
        raise BackendUnavailableError(f"device 'cuda' is not usable: {status.reason}")
    import cupy

    current = cupy.cuda.runtime.getDevice()
    device = f"cuda:{current} {status.devices[current]}, CuPy {status.cupy_version}"
    return Backend("cuda", cupy, device, CUDA_KERNELS)


def get_backend(name: str | Backend = "auto") -> Backend:
    """The backend for a device name.

    Parameters
    ----------
    name : {"auto", "cpu", "cuda"} or Backend
        "numpy" and "cupy" (and "gpu") are aliases. "auto" takes CuPy when it imports and a GPU
        is visible, NumPy otherwise (``cuda_status().reason`` says why).

    Raises
    ------
    ValueError
        For an unknown name.
    BackendUnavailableError
        For "cuda" when CuPy is missing, fails to import, or sees no device.
    """
    if isinstance(name, Backend):
        return name
    key = _ALIASES.get(str(name).lower()) if isinstance(name, str) else None
    if key is None:
        raise ValueError(f"unknown device {name!r}: expected one of 'auto', 'cpu', 'cuda'")
    if key == "auto":
        return _cuda_backend() if cuda_status().usable else _cpu_backend()
    if key == "cuda":
        return _cuda_backend()
    return _cpu_backend()
