"""Which parts of the graph stay fp32 in lower precisions (torch-free, shared by the ONNX
export, INT8 calibration and the TensorRT builder).

- Memory selection (``/normal_memory/``) and the scoring head (``/head/``) stay fp32 in
  every precision: the argmin over memory items and the top-k mean of the map are where a
  small numeric change flips a decision.
- MSFF (``/msff/``) has no normalisation layers; its activations reach ~7e4 on real data
  (measured on trained EfficientNet-Lite0 models), above the fp16 maximum of 65504, so it
  stays fp32 in FP16 graphs and engines. INT8 quantizes its convolutions with calibrated
  scales, but the element-wise products around them must not fall back to fp16 either.
"""

from __future__ import annotations

FP32_ALWAYS = ("/normal_memory/", "/head/")
FP32_IN_FP16 = FP32_ALWAYS + ("/msff/",)


def keep_fp32(name: str, fp16: bool) -> bool:
    return name.startswith(FP32_IN_FP16 if fp16 else FP32_ALWAYS)
