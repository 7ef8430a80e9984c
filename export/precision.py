"""Which parts of the graph stay fp32 in lower precisions (torch-free, shared by the ONNX
export, INT8 calibration and the TensorRT builder).

- Memory reads (``/normal_memory/``, ``/patch_memory/``) and the scoring head (``/head/``)
  stay fp32 in every precision: the argmin over memory items and the top-k mean of the map
  are where a small numeric change flips a decision.
- MSFF (``/msff/``) has no normalisation layers and multiplies two convolutions of its
  input, so its activations grow with training: 5e4 to 1.7e6 on EfficientNet-Lite0 models
  after 150 steps (``benchmarks/activation_range.py``), and the bottleneck's first
  convolutions (``/bottleneck/``, before their BatchNorm) take that range as input. Both
  exceed fp16's maximum of 65504, so in FP16 graphs and engines they stay fp32 too; only
  the teacher and the student decoder run in fp16.
  INT8 quantizes their convolutions with calibrated scales; the accuracy guard checks it.
"""

from __future__ import annotations

FP32_ALWAYS = ("/normal_memory/", "/patch_memory/", "/head/")
FP32_IN_FP16 = FP32_ALWAYS + ("/msff/", "/bottleneck/")
TEACHER = "/teacher/"


def keep_fp32(name: str, fp16: bool) -> bool:
    return name.startswith(FP32_IN_FP16 if fp16 else FP32_ALWAYS)


def int8_excluded(name: str, quantize_teacher: bool = False) -> bool:
    """Nodes without Q/DQ in the INT8 graph. The teacher is excluded by default: its features
    are the reference the anomaly map is measured against, so its quantization noise shows up
    directly as anomaly everywhere (measured on the trained default model: teacher int8 ->
    PRO@0.3 93.4 -> 86.6 and every score +0.50; teacher fp32 -> 93.1 and +0.002)."""
    return keep_fp32(name, fp16=False) or (not quantize_teacher and name.startswith(TEACHER))
