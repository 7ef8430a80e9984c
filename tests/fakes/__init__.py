"""Strict fakes of ``tensorrt`` (8.6, 10.x, 11.x) and ``pycuda`` sharing one pretend GPU, so
the engine builder and the TensorRT backend run on a machine without either. What they are
written from and which rules they enforce: the docstrings of fake_tensorrt.py and
fake_pycuda.py. ``installed`` puts them into ``sys.modules`` and takes them out again."""

from __future__ import annotations

import contextlib
import sys

from . import fake_pycuda, fake_tensorrt
from .gpu import FakeGPU

VERSIONS = ("8.6.2.3", "10.3.0", "11.1.0")


@contextlib.contextmanager
def installed(version: str, gpu: FakeGPU | None = None):
    """Yields (tensorrt module, FakePycuda) with both importable; restores what was there."""
    gpu = gpu or FakeGPU()
    trt, cuda = fake_tensorrt.make(version, gpu), fake_pycuda.FakePycuda(gpu)
    saved = {
        n: m
        for n, m in sys.modules.items()
        if n == "tensorrt" or n == "pycuda" or n.startswith("pycuda.")
    }
    saved_path = list(sys.meta_path)
    for name in saved:
        del sys.modules[name]
    sys.modules.update({"tensorrt": trt, **cuda.modules()})
    sys.meta_path.insert(0, cuda.finder)
    try:
        yield trt, cuda
    finally:
        sys.meta_path[:] = saved_path
        for name in [
            n for n in sys.modules if n == "tensorrt" or n == "pycuda" or n.startswith("pycuda.")
        ]:
            del sys.modules[name]
        sys.modules.update(saved)


__all__ = ["VERSIONS", "FakeGPU", "installed", "fake_pycuda", "fake_tensorrt"]
