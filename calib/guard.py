"""Accuracy guard: fp32 vs int8 on held-out normal and pseudo-anomalous images, and
per-layer sensitivity to choose which layers to keep in higher precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from dmgrd_edge.config import PreprocessConfig
from dmgrd_edge.data.preprocess import normalize
from dmgrd_edge.inference import OnnxModel
from dmgrd_edge.metrics import auroc, pro_auc

from .quantize import QUANT_OP_TYPES


def run_onnx(path: Path, images: np.ndarray, cfg: PreprocessConfig, batch_size: int = 8):
    model = OnnxModel(path)
    maps, scores = [], []
    for i in range(0, len(images), batch_size):
        amap, score = model.infer(normalize(images[i : i + batch_size], cfg))
        maps.append(amap[:, 0])
        scores.append(score)
    return np.concatenate(maps), np.concatenate(scores)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def compare(reference, candidate, labels: np.ndarray, masks: np.ndarray) -> dict:
    """Deltas are in points (x100), positive = candidate is worse."""
    (ref_maps, ref_scores), (cand_maps, cand_scores) = reference, candidate
    result = {
        "i_auroc_fp32": auroc(labels, ref_scores),
        "i_auroc_int8": auroc(labels, cand_scores),
        "pro_30_fp32": pro_auc(masks, ref_maps, 0.3),
        "pro_30_int8": pro_auc(masks, cand_maps, 0.3),
        "map_cosine_mean": float(_cosine(ref_maps, cand_maps).mean()),
        "map_cosine_min": float(_cosine(ref_maps, cand_maps).min()),
        "score_max_rel_err": float(
            np.max(np.abs(cand_scores - ref_scores) / np.maximum(np.abs(ref_scores), 1e-12))
        ),
    }
    result["i_auroc_drop_points"] = 100 * (result["i_auroc_fp32"] - result["i_auroc_int8"])
    result["pro_30_drop_points"] = 100 * (result["pro_30_fp32"] - result["pro_30_int8"])
    return result


def within(guard: dict, max_drop: float) -> bool:
    return guard["i_auroc_drop_points"] <= max_drop and guard["pro_30_drop_points"] <= max_drop


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> bytes:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return model.SerializeToString()


def layer_sensitivity(
    fp32_path: Path, int8_path: Path, images: np.ndarray, cfg: PreprocessConfig
) -> list[dict]:
    """Error each quantized layer adds: (1 - cosine) at its output minus at its input,
    fp32 vs int8, on a few images. Sorted, most sensitive first."""
    import onnxruntime as ort

    from .quantize import quantized_nodes

    int8 = onnx.load(str(int8_path))
    fp32 = onnx.load(str(fp32_path))
    fp32_nodes = {n.name: n for n in fp32.graph.node if n.op_type in QUANT_OP_TYPES}
    layers = [fp32_nodes[name] for name in quantized_nodes(int8) if name in fp32_nodes]
    tensors = sorted({t for n in layers for t in (n.input[0], n.output[0])})
    feed = {"image": normalize(images, cfg)}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    outs = []
    for model in (fp32, int8):
        session = ort.InferenceSession(
            _with_outputs(model, tensors), options, providers=["CPUExecutionProvider"]
        )
        values = session.run(tensors, feed)
        outs.append(dict(zip(tensors, values)))
    error = {t: float(1 - _cosine(outs[0][t], outs[1][t]).mean()) for t in tensors}
    ranked = [
        {
            "node": n.name,
            "op": n.op_type,
            "added_error": error[n.output[0]] - error[n.input[0]],
            "output_error": error[n.output[0]],
        }
        for n in layers
    ]
    return sorted(ranked, key=lambda r: r["added_error"], reverse=True)
