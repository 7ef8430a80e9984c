"""TensorRT backend (TensorRT >= 8.6 name-based API, pycuda).

At load, the engine's optimization profile gives the batch sizes it takes (``batch_range``);
a ``max_batch`` outside it is refused with the fix. A call with fewer images than the
profile's minimum (the short last batch of a stream) is padded with zeros up to it; a call
with more than ``max_batch`` is split into chunks of ``max_batch``. An engine built for a DLA
core runs on that core. Page-locked host buffers and device buffers are allocated once for
``max_batch`` and reused; each call copies in, executes and copies out asynchronously on
one CUDA stream and synchronises once. ``close()`` frees the buffers, the execution
context, the engine and the runtime, in that order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmgrd_edge.errors import ConfigError

from .backend import BackendError, check_batch, run_in_chunks

TENSORS = ("image", "anomaly_map", "score")


class TensorRTBackend:
    name = "tensorrt"
    # the CUDA context (the device's primary context, made current by pycuda.autoprimaryctx)
    # is current in the thread that created the backend only
    calls_from_any_thread = False
    batch_range: tuple[int, int]  # the engine's optimization profile, read at load

    def __init__(
        self,
        engine_path: str | Path,
        precision: str,
        max_batch: int,
        dla_core: int | None = None,
        image_size: tuple[int, int] | None = None,
    ):
        from dmgrd_edge.device import import_tensorrt

        trt = import_tensorrt()  # refuses TensorRT < 8.6 (JetPack 5)
        try:
            import pycuda.autoprimaryctx  # noqa: F401  (retains and pushes the primary context)
            import pycuda.driver as cuda
        except ImportError as exc:
            raise BackendError(
                "the TensorRT backend needs pycuda",
                "pip install pycuda (on a Jetson in the venv made with "
                "--system-site-packages); or use --backend onnxruntime",
            ) from exc
        self.cuda, self.trt = cuda, trt
        self.path, self.precision, self.dla_core = Path(engine_path), precision, dla_core
        self.buffers: dict[str, tuple[np.ndarray, object, tuple[int, ...]]] = {}
        self.runtime = self.engine = self.context = self.stream = None
        try:
            self._load(max_batch, image_size)
        except BaseException:
            self.close()
            raise

    def _rebuild(self) -> str:
        return f"rebuild it here: dmgrd-edge build-engine BUNDLE --precision {self.precision}"

    def _load(self, max_batch: int, image_size: tuple[int, int] | None) -> None:
        self._deserialize()
        self._check_io(image_size)
        self._check_batch(max_batch)
        self.max_batch = max_batch
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.Stream()
        self._set_shape(max_batch)
        self._allocate(max_batch)

    def _deserialize(self) -> None:
        trt, file = self.trt, self.path.name
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if self.dla_core is not None:
            cores = self.runtime.num_DLA_cores
            if not 0 <= self.dla_core < cores:
                raise BackendError(
                    f"engine {file} was built for DLA core {self.dla_core}, "
                    f"this device has {cores} DLA cores",
                    self._rebuild() + " (without --dla-core, or with a core it has)",
                )
            self.runtime.DLA_core = self.dla_core  # before deserialising: the engine runs there
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise BackendError(
                f"TensorRT {trt.__version__} cannot load {file}: truncated, or "
                "built by another TensorRT version or for another device",
                self._rebuild(),
            )

    def _check_io(self, image_size: tuple[int, int] | None) -> None:
        """The engine's tensors are the model's, at the bundle's image size."""
        engine, file = self.engine, self.path.name
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT]
        if inputs != ["image"] or not {"anomaly_map", "score"} <= set(names):
            raise BackendError(f"engine {file} has tensors {names}", "rebuild it from this bundle")
        shape = tuple(engine.get_tensor_shape("image"))
        self.height, self.width = int(shape[2]), int(shape[3])
        if image_size is not None and (self.height, self.width) != tuple(image_size):
            raise BackendError(
                f"engine {file} takes {self.height}x{self.width} images, the "
                f"bundle's model {image_size[0]}x{image_size[1]}",
                self._rebuild(),
            )

    def _check_batch(self, max_batch: int) -> None:
        """The engine's profile covers ``max_batch`` (else the request, not the engine, is
        wrong: a ConfigError naming the rebuild that would take it)."""
        file = self.path.name
        low, _, high = (tuple(s) for s in self.engine.get_tensor_profile_shape("image", 0))
        self.batch_range = lo, hi = int(low[0]), int(high[0])
        if not lo <= max_batch <= hi:
            wider = f"{min(lo, max_batch)}:{max_batch}:{max(hi, max_batch)}"
            raise ConfigError(
                f"engine {file} takes batches of {lo} to {hi} images (its "
                f"optimization profile), not {max_batch}",
                f"use a --batch from {lo} to {hi}, or rebuild the engine with a "
                f"profile that covers {max_batch}: dmgrd-edge build-engine BUNDLE "
                f"--precision {self.precision} --batch {wider}",
            )
        self.fixed_batch = lo if lo == hi else None

    def _allocate(self, max_batch: int) -> None:
        """Page-locked host and device buffers for every tensor at ``max_batch``."""
        trt, cuda, file = self.trt, self.cuda, self.path.name
        expected = {
            "image": (max_batch, 3, self.height, self.width),
            "anomaly_map": (max_batch, 1, self.height, self.width),
            "score": (max_batch,),
        }
        for name in TENSORS:
            dims = tuple(self.context.get_tensor_shape(name))
            if dims != expected[name]:
                raise BackendError(
                    f"engine {file}: tensor {name} has shape {dims} for a batch "
                    f"of {max_batch}, not {expected[name]}",
                    "rebuild it from this bundle",
                )
            dtype = trt.nptype(self.engine.get_tensor_dtype(name))
            host = cuda.pagelocked_empty(int(np.prod(dims)), dtype)
            device = cuda.mem_alloc(host.nbytes)
            self.buffers[name] = (host, device, dims)
            if not self.context.set_tensor_address(name, int(device)):
                raise BackendError(
                    f"TensorRT refused the buffer address of {name}", self._rebuild()
                )

    def _set_shape(self, batch: int) -> None:
        if not self.context.set_input_shape("image", (batch, 3, self.height, self.width)):
            lo, hi = self.batch_range
            raise BackendError(
                f"TensorRT refused a batch of {batch} for {self.path.name} "
                f"(its profile takes {lo} to {hi})",
                f"use a --batch from {lo} to {hi}, or rebuild the engine with a "
                "wider profile: dmgrd-edge build-engine BUNDLE --batch MIN:OPT:MAX",
            )

    def _run(self, chunk: np.ndarray):
        if self.context is None:
            raise BackendError(f"the TensorRT backend for {self.path.name} is closed")
        n, lo = len(chunk), self.batch_range[0]
        if n < lo:  # a stream's short last batch: zeros up to the profile's minimum
            chunk = np.concatenate([chunk, np.zeros((lo - n,) + chunk.shape[1:], chunk.dtype)])
        host_in, dev_in, _ = self.buffers["image"]
        np.copyto(host_in[: chunk.size].reshape(chunk.shape), chunk, casting="same_kind")
        self._set_shape(len(chunk))
        self.cuda.memcpy_htod_async(dev_in, host_in[: chunk.size], self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise BackendError(f"TensorRT could not run {self.path.name} (see its log above)")
        outputs = []
        for name in ("anomaly_map", "score"):
            host, device, dims = self.buffers[name]
            count = len(chunk) * int(np.prod(dims[1:]))
            self.cuda.memcpy_dtoh_async(host[:count], device, self.stream)
            outputs.append((host, count, (len(chunk),) + dims[1:]))
        self.stream.synchronize()
        return tuple(h[:c].reshape(s)[:n].astype(np.float32, copy=True) for h, c, s in outputs)

    def infer(self, batch: np.ndarray):
        batch = check_batch(batch, self.height, self.width)
        return run_in_chunks(self._run, batch, None, self.max_batch)

    def close(self) -> None:
        """Free the device and page-locked buffers, then the execution context, the engine
        and the runtime, in that order (each is used by the one before it). Safe to repeat."""
        for host, device, _ in self.buffers.values():
            device.free()
            host.base.free()  # pagelocked_empty's array: its base is the HostAllocation
        self.buffers = {}
        self.context = None
        self.engine = None
        self.runtime = None
        self.stream = None

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "file": self.path.name,
            "precision": self.precision,
            "tensorrt": self.trt.__version__,
            "fixed_batch": self.fixed_batch,
            "max_batch": self.max_batch,
            "batch_range": list(self.batch_range),
            "dla_core": self.dla_core,
        }
