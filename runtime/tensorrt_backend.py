"""TensorRT backend (TensorRT >= 8.6 name-based API, pycuda).

Page-locked host buffers and device buffers are allocated once for the largest batch and
reused; each call copies in, executes and copies out asynchronously on one CUDA stream and
synchronises once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .backend import BackendError, check_batch, run_in_chunks


class TensorRTBackend:
    name = "tensorrt"
    calls_from_any_thread = False  # the CUDA context (pycuda.autoinit) is current in the creating thread only

    def __init__(self, engine_path: str | Path, precision: str, max_batch: int):
        try:
            import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as exc:
            raise BackendError("the TensorRT backend needs tensorrt and pycuda",
                               "on a Jetson: JetPack's python3-libnvinfer and pip install pycuda; "
                               "or use --backend onnxruntime") from exc
        self.cuda, self.trt = cuda, trt
        self.path, self.precision = Path(engine_path), precision
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT cannot load {self.path}", "rebuild it here with `dmgrd-edge build-engine`")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != ["image"] or not {"anomaly_map", "score"} <= set(names):
            raise BackendError(f"engine {self.path.name} has tensors {names}", "rebuild it from this bundle")
        shape = tuple(self.engine.get_tensor_shape("image"))
        self.height, self.width = int(shape[2]), int(shape[3])
        self.fixed_batch = shape[0] if shape[0] > 0 else None
        self.max_batch = self.fixed_batch or max_batch
        self.buffers = {}
        for name in ("image", "anomaly_map", "score"):
            dims = {"image": (self.max_batch, 3, self.height, self.width),
                    "anomaly_map": (self.max_batch, 1, self.height, self.width), "score": (self.max_batch,)}[name]
            dtype = trt.nptype(self.engine.get_tensor_dtype(name))
            host = cuda.pagelocked_empty(int(np.prod(dims)), dtype)
            device = cuda.mem_alloc(host.nbytes)
            self.buffers[name] = (host, device, dims, dtype)
            self.context.set_tensor_address(name, int(device))

    def _run(self, chunk: np.ndarray):
        n = len(chunk)
        host_in, dev_in, _, dtype = self.buffers["image"]
        flat = host_in[: chunk.size].reshape(chunk.shape)
        np.copyto(flat, chunk.astype(dtype, copy=False))
        self.context.set_input_shape("image", chunk.shape)
        self.cuda.memcpy_htod_async(dev_in, host_in[: chunk.size], self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise BackendError("TensorRT execution failed")
        outputs = []
        for name in ("anomaly_map", "score"):
            host, device, dims, _ = self.buffers[name]
            count = n * int(np.prod(dims[1:]))
            self.cuda.memcpy_dtoh_async(host[:count], device, self.stream)
            outputs.append((host, count, (n,) + dims[1:]))
        self.stream.synchronize()
        return tuple(h[:c].reshape(s).astype(np.float32, copy=True) for h, c, s in outputs)

    def infer(self, batch: np.ndarray):
        batch = check_batch(batch, self.height, self.width)
        return run_in_chunks(self._run, batch, self.fixed_batch, self.max_batch)

    def describe(self) -> dict:
        return {"backend": self.name, "file": self.path.name, "precision": self.precision,
                "tensorrt": self.trt.__version__, "fixed_batch": self.fixed_batch, "max_batch": self.max_batch}
