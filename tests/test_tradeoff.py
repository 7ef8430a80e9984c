"""Trade-off report logic: Pareto front per device and the recommendation."""

import pytest

from dmgrd_edge.errors import ConfigError
from dmgrd_edge.tradeoff import Variant, mark_pareto, recommend, write_report


def variant(name, ms, pro, device="cpu A"):
    return Variant(name=name, device=device, backbone=name, image_size=256, file="model.onnx", precision="fp32",
                   backend="onnxruntime", ms_b1_p50=ms, ms_b1_p99=ms, best_images_per_s=1000 / ms, best_batch=1,
                   peak_host_rss_mib=1.0, startup_s=0.1, i_auroc=None, p_auroc=None, pro_30=pro, source="x.json")


def test_pareto_front_and_recommendation():
    fast_poor = variant("fast", 10, 0.90)
    slow_good = variant("slow", 40, 0.95)
    dominated = variant("dominated", 45, 0.93)  # slower and worse than "slow"
    middle = variant("middle", 20, 0.945)
    other_device = variant("gpu", 100, 0.80, device="gpu B")  # alone on its device: on its front
    no_accuracy = variant("unscored", 5, None)
    variants = [fast_poor, slow_good, dominated, middle, other_device, no_accuracy]
    mark_pareto(variants, "pro_30")
    assert [v.name for v in variants if v.pareto] == ["fast", "slow", "middle", "gpu", "unscored"]
    picks = recommend(variants, "pro_30", max_drop=1.0)
    assert picks["cpu A"].name == "middle"  # 0.5 points below the best, twice as fast
    assert recommend(variants, "pro_30", max_drop=0.1)["cpu A"].name == "slow"
    assert recommend(variants, "pro_30", max_drop=10)["cpu A"].name == "fast"
    assert picks["gpu B"].name == "gpu"


def test_report_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="pro_30"):
        write_report([tmp_path / "x.json"], tmp_path / "out", metric="f1")
    with pytest.raises(ConfigError, match="no bench results"):
        write_report([], tmp_path / "out")


def test_variant_names_tell_pruned_and_labelled_bundles_apart(tmp_path):
    import json

    from dmgrd_edge.tradeoff import load_result

    def bench(name, **extra):
        data = {"latency": [{"batch": 1, "ms_p50": 10.0, "ms_p99": 12.0, "images_per_s": 100.0}],
                "backend": {"backend": "onnxruntime", "file": "model.onnx", "precision": "fp32"},
                "model": {"backbone": "efficientnet_lite0", "image_size": 256}, "device": {"cpu": "A"}, **extra}
        (tmp_path / name).write_text(json.dumps(data))
        return load_result(tmp_path / name).name

    assert bench("plain.json").startswith("efficientnet_lite0 fp32")
    assert bench("cut.json", pruning={"ratio": 0.5}).startswith("efficientnet_lite0 pruned 50% fp32")
    assert bench("labelled.json", label="line 3 candidate").startswith("line 3 candidate fp32")


@pytest.mark.parametrize("nvpmodel", [
    {"mode": "MAXN", "id": 0, "raw": "NV Power Mode: MAXN\n0"},  # parsed, as bench writes it now
    "NV Power Mode: MAXN\n0",  # the raw text older bench results carry
    {"mode": None, "id": None, "raw": "NV Power Mode: MAXN\n0"},  # a form the parser did not know
])
def test_report_reads_jetson_results_with_either_power_mode_form(tmp_path, nvpmodel):
    """`dmgrd-edge report` on results recorded on a Jetson: the parsed nvpmodel dict and the
    older raw text give the same device label (no AttributeError on the dict)."""
    import json

    old = {"nvpmodel": "NV Power Mode: MAXN\n0", "l4t": "R36.3.0"}
    paths = []
    new = {"nvpmodel": nvpmodel, "l4t": "R36.3.0"}
    for name, jetson, ms in (("new.json", new, 2.0), ("old.json", old, 3.0)):
        data = {"latency": [{"batch": 1, "ms_p50": ms, "ms_p99": ms, "images_per_s": 1000 / ms}],
                "backend": {"backend": "tensorrt", "file": f"engines/{name}.engine",
                            "precision": "int8"},
                "model": {"backbone": "efficientnet_lite0", "image_size": 256},
                "device": {"cpu": "ARMv8", "gpu": "Orin", "jetson": jetson}}
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(data))
    result = write_report(paths, tmp_path / "out")
    assert {v.device for v in result["variants"]} == {"Orin (R36.3.0, MAXN)"}
    assert "## Orin (R36.3.0, MAXN)" in result["paths"]["md"].read_text()
