"""A strict stand-in for pycuda on a machine without CUDA: ``pycuda``, ``pycuda.driver``,
``pycuda.autoprimaryctx`` and ``pycuda.autoinit``.

Names and signatures follow pycuda's bindings (github.com/inducer/pycuda, branch main):
``src/wrapper/wrap_cudadrv.cpp`` (``init``, ``Device`` with ``count``/``name``/
``compute_capability``/``total_memory``/``retain_primary_context``/``make_context``,
``Context.push``/``pop``, ``Stream`` with ``handle``/``synchronize``, ``mem_alloc`` ->
``DeviceAllocation`` with ``__int__``/``free``, ``pagelocked_empty`` whose array's ``base``
is a ``HostAllocation`` with ``free``, ``memcpy_htod_async``/``memcpy_dtoh_async(dest, src,
stream=None)``, ``mem_get_info``, ``get_driver_version``), and ``pycuda/autoprimaryctx.py``
and ``pycuda/autoinit.py`` for what importing those modules does (``init()``, then the
device's primary context retained and pushed, or a new context made and pushed).

Rules enforced (pycuda raises where this fake raises; messages are this fake's own):
- nothing works before ``init()``; allocations, streams and copies need a context current
  *in the calling thread* (CUDA contexts are per thread);
- async copies need page-locked host memory (pycuda's documentation of the async copies);
- device addresses must lie inside a live allocation; freeing twice is an error.
Not modelled: real asynchrony (copies happen at once), the ``atexit`` pop of the context.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import itertools
import types
import weakref

import numpy as np

from .gpu import FakeDeviceError, FakeGPU


class Error(Exception):
    pass


class LogicError(Error):
    pass


class HostAllocation(np.ndarray):
    """Page-locked host memory; pagelocked_empty's array has this as its ``base``."""

    def free(self) -> None:
        if getattr(self, "_freed", False):
            raise LogicError("HostAllocation freed twice")
        self._freed = True
        self._gpu.log.append("free host")


def _pagelocked(array: np.ndarray) -> HostAllocation | None:
    while isinstance(array, np.ndarray):
        if isinstance(array, HostAllocation):
            return array
        array = array.base
    return None


def make_driver(gpu: FakeGPU) -> types.ModuleType:
    driver = types.ModuleType("pycuda.driver")
    state = {"initialised": False}
    handles = itertools.count(0x5000)

    def require_init() -> None:
        if not state["initialised"]:
            raise LogicError("cuInit has not been called: call pycuda.driver.init() first")

    def require_context(what: str) -> None:
        require_init()
        try:
            gpu.require_context(what)
        except FakeDeviceError as exc:
            raise LogicError(str(exc)) from None

    def init(flags: int = 0) -> None:
        state["initialised"] = True

    class Context:
        def __init__(self, device: "Device", primary: bool):
            self.device, self.primary = device, primary

        def push(self) -> None:
            gpu.stack().append(self)
            gpu.log.append(f"push {'primary' if self.primary else 'own'} context")

        def pop(self) -> None:  # pycuda's Context.pop pops the thread's current context
            if not gpu.stack():
                raise LogicError("context stack is empty")
            gpu.stack().pop()
            gpu.log.append("pop context")

        def get_device(self) -> "Device":
            return self.device

    class Device:
        def __init__(self, number: int):
            require_init()
            if not 0 <= number < 1:
                raise LogicError(f"cuDeviceGet failed: invalid device ordinal {number}")
            self.number = number

        @staticmethod
        def count() -> int:
            require_init()
            return 1

        def name(self) -> str:
            return gpu.name

        def compute_capability(self) -> tuple[int, int]:
            return gpu.compute_capability

        def total_memory(self) -> int:
            return gpu.total_memory

        def retain_primary_context(self) -> Context:
            return Context(self, primary=True)

        def make_context(self, flags: int = 0) -> Context:
            context = Context(self, primary=False)
            context.push()
            return context

    class Stream:
        def __init__(self, flags: int = 0):
            require_context("cuStreamCreate")
            self.handle = next(handles)
            gpu.streams.add(self.handle)
            weakref.finalize(self, gpu.streams.discard, self.handle)

        def synchronize(self) -> None:
            require_context("cuStreamSynchronize")

    class DeviceAllocation:
        def __init__(self, nbytes: int):
            self.address, self.freed = gpu.allocate(nbytes), False

        def __int__(self) -> int:
            if self.freed:
                raise LogicError("use of a freed DeviceAllocation")
            return self.address

        __index__ = __int__

        def free(self) -> None:
            if self.freed:
                raise LogicError("DeviceAllocation freed twice")
            gpu.release(self.address)
            self.freed = True

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        require_context("cuMemAlloc")
        return DeviceAllocation(int(nbytes))

    def pagelocked_empty(shape, dtype, order: str = "C", mem_flags: int = 0) -> np.ndarray:
        require_context("cuMemHostAlloc")
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        allocation = HostAllocation((max(count * dtype.itemsize, 1),), np.uint8)
        allocation._gpu, allocation._freed = gpu, False
        gpu.log.append(f"alloc host {count * dtype.itemsize}")
        return np.ndarray(shape, dtype, buffer=allocation, order=order)

    def check_copy(host: np.ndarray, stream, what: str) -> None:
        require_context(what)
        allocation = _pagelocked(host)
        if allocation is None:
            raise LogicError(f"{what}: the host array is not page-locked (use pagelocked_empty)")
        if allocation._freed:
            raise LogicError(f"{what}: the host array's HostAllocation was freed")
        if not host.flags.c_contiguous:
            raise LogicError(f"{what}: the host array is not contiguous")
        if stream is not None and (
            not isinstance(stream, Stream) or stream.handle not in gpu.streams
        ):
            raise LogicError(f"{what}: not a live pycuda Stream: {stream!r}")

    def memcpy_htod_async(dest, src: np.ndarray, stream=None) -> None:
        check_copy(src, stream, "cuMemcpyHtoDAsync")
        gpu.view(int(dest), src.nbytes)[:] = src.tobytes()

    def memcpy_dtoh_async(dest: np.ndarray, src, stream=None) -> None:
        check_copy(dest, stream, "cuMemcpyDtoHAsync")
        dest.reshape(-1).view(np.uint8)[:] = np.frombuffer(
            gpu.view(int(src), dest.nbytes), np.uint8
        )

    def mem_get_info() -> tuple[int, int]:
        require_context("cuMemGetInfo")
        used = sum(len(block) for block in gpu.memory.values())
        return gpu.total_memory - used, gpu.total_memory

    def get_driver_version() -> int:
        return 12020

    for name, value in dict(
        Error=Error,
        LogicError=LogicError,
        HostAllocation=HostAllocation,
        init=init,
        Context=Context,
        Device=Device,
        Stream=Stream,
        DeviceAllocation=DeviceAllocation,
        mem_alloc=mem_alloc,
        pagelocked_empty=pagelocked_empty,
        memcpy_htod_async=memcpy_htod_async,
        memcpy_dtoh_async=memcpy_dtoh_async,
        mem_get_info=mem_get_info,
        get_driver_version=get_driver_version,
    ).items():
        setattr(driver, name, value)
    return driver


class _AutoContextFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``pycuda.autoprimaryctx`` / ``pycuda.autoinit`` with their side effect, and
    records that they were imported."""

    def __init__(self, driver: types.ModuleType):
        self.driver, self.imported = driver, []

    def find_spec(self, fullname, path, target=None):
        if fullname in ("pycuda.autoprimaryctx", "pycuda.autoinit"):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        self.imported.append(module.__name__)
        self.driver.init()
        device = self.driver.Device(0)
        if module.__name__ == "pycuda.autoprimaryctx":
            module.context = device.retain_primary_context()
            module.context.push()
        else:
            module.context = device.make_context()
        module.device = device


class FakePycuda:
    """The installed fake: ``driver`` (the module), ``imported`` (auto-context modules
    imported so far), ``gpu``."""

    def __init__(self, gpu: FakeGPU):
        self.gpu = gpu
        self.driver = make_driver(gpu)
        self.finder = _AutoContextFinder(self.driver)
        self.package = types.ModuleType("pycuda")
        self.package.__path__ = []  # a package, so its submodules can be imported
        self.package.driver = self.driver

    @property
    def imported(self) -> list[str]:
        return self.finder.imported

    def modules(self) -> dict[str, types.ModuleType]:
        return {"pycuda": self.package, "pycuda.driver": self.driver}


def remove_from(modules: dict) -> None:
    for name in [n for n in modules if n == "pycuda" or n.startswith("pycuda.")]:
        del modules[name]
