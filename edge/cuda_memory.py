"""Device memory, copies and a stream for the TensorRT backend: cuda-python or pycuda.

    numpy (host) ─► to_device(ptr) ─► TensorRT execute_async_v3(stream_handle)
                  ◄─ to_host(ptr) ◄──   synchronize()

TensorRT's Python API takes raw device pointers and a stream handle but does not
allocate or copy; one of two packages does. Both adapters expose the same few
calls (the CudaMemory protocol) and identify the GPU for the engine cache key.
Copies are synchronous: one frame at a time, the encode loop waits anyway, and
pageable numpy buffers are then correct with either package.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from edge.backend_errors import BackendUnavailable


class CudaMemory(Protocol):
    gpu_name: str
    compute_capability: tuple[int, int]

    @property
    def stream_handle(self) -> int: ...

    def alloc(self, nbytes: int) -> int: ...

    def free(self, pointer: int) -> None: ...

    def to_device(self, pointer: int, host: np.ndarray) -> None: ...

    def to_host(self, host: np.ndarray, pointer: int) -> None: ...

    def synchronize(self) -> None: ...


class CudaPythonMemory:
    """NVIDIA's cuda-python runtime bindings (every call returns (error, *values))."""

    def __init__(self, device: int) -> None:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python ≥ 12.6
        except ImportError:
            from cuda import cudart  # older cuda-python
        self.rt: Any = cudart
        self._check(cudart.cudaSetDevice(device))
        props = self._check(cudart.cudaGetDeviceProperties(device))
        name = props.name
        self.gpu_name = (name.decode(errors="replace") if isinstance(name, bytes) else name).strip(
            "\0 "
        )
        self.compute_capability = (int(props.major), int(props.minor))
        self.stream = self._check(cudart.cudaStreamCreate())

    def _check(self, result: tuple[Any, ...]) -> Any:
        error, *values = result
        if error != self.rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA runtime error: {error}")
        return values[0] if values else None

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def alloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(nbytes)))

    def free(self, pointer: int) -> None:
        self._check(self.rt.cudaFree(pointer))

    def to_device(self, pointer: int, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpy(pointer, host.ctypes.data, host.nbytes, kind))

    def to_host(self, host: np.ndarray, pointer: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpy(host.ctypes.data, pointer, host.nbytes, kind))

    def synchronize(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream))


class PyCudaMemory:
    """pycuda's driver API, on the device's primary context (the one TensorRT uses)."""

    def __init__(self, device: int) -> None:
        import pycuda.driver as cuda

        self.cuda: Any = cuda
        cuda.init()
        dev = cuda.Device(device)
        # Not pycuda.autoinit: that makes a new context, while TensorRT runs on the
        # CUDA runtime, which uses the primary context; share it.
        self.context = dev.retain_primary_context()
        self.context.push()
        self.gpu_name = str(dev.name())
        major, minor = dev.compute_capability()
        self.compute_capability = (int(major), int(minor))
        self.stream = cuda.Stream()
        self._allocations: dict[int, Any] = {}  # pycuda frees memory when these are collected

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def alloc(self, nbytes: int) -> int:
        allocation = self.cuda.mem_alloc(nbytes)
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer: int) -> None:
        allocation = self._allocations.pop(pointer, None)
        if allocation is not None:
            allocation.free()

    def to_device(self, pointer: int, host: np.ndarray) -> None:
        self.cuda.memcpy_htod(pointer, host)

    def to_host(self, host: np.ndarray, pointer: int) -> None:
        self.cuda.memcpy_dtoh(host, pointer)

    def synchronize(self) -> None:
        self.stream.synchronize()


def open_cuda_memory(device: int, install_hint: str) -> CudaMemory:
    """cuda-python if installed, else pycuda; a ValueError naming the extra if neither is."""
    try:
        return CudaPythonMemory(device)
    except ImportError:
        pass
    try:
        return PyCudaMemory(device)
    except ImportError as exc:
        message = f"backend 'tensorrt' needs a CUDA binding: {install_hint}"
        raise BackendUnavailable(message) from exc
