"""The catalog of model files (dmgrd_edge/catalog.py) is the one table of file names,
precisions, targets and consumers: export, the engine builder, calibration, the runtime and
the manifest check all read it."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from dmgrd_edge import bundle, catalog

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ["dmgrd_edge", "train", "calib", "export", "runtime"]


def test_entries_are_typed_unique_and_consistent():
    assert len({f.key for f in catalog.CATALOG}) == len(catalog.CATALOG)
    assert len({f.name for f in catalog.CATALOG}) == len(catalog.CATALOG)
    for entry in catalog.CATALOG:
        with pytest.raises(dataclasses.FrozenInstanceError):
            entry.name = "other.onnx"
    with pytest.raises(TypeError):
        catalog.ModelFile("k", "n", "onnx", "fp32", None, "c", "w", True)  # keyword only
    with pytest.raises(ValueError, match="unknown precision"):
        catalog.ModelFile(
            key="k",
            name="n",
            kind="onnx",
            precision="int4",
            target=None,
            consumer="c",
            written_when="w",
            trt_parsable=True,
        )


def test_lookups():
    assert catalog.engine_source("fp32").name == "model.onnx"
    assert catalog.engine_source("int8").name == "model.int8.onnx"
    assert catalog.engine_source("fp16").name == "model.fp16.onnx"
    assert catalog.int8_file("cpu").name == "model.int8-cpu.onnx"
    assert not catalog.int8_file("cpu").trt_parsable and catalog.int8_file("tensorrt").trt_parsable
    with pytest.raises(KeyError):
        catalog.onnx_file("fp16", "cpu")


def test_every_table_reads_the_catalog():
    from dmgrd_edge.calib.quantize import PLANS
    from dmgrd_edge.runtime.select import PRECISIONS as RUN_PRECISIONS

    from dmgrd_edge.options import ExportOptions

    assert bundle.PRECISIONS is catalog.PRECISIONS and bundle.FILE_KINDS is catalog.FILE_KINDS
    assert set(PLANS) == set(catalog.INT8_TARGETS)
    assert set(RUN_PRECISIONS) == {"auto", *catalog.PRECISIONS}
    everything = ExportOptions(checkpoint="c.pt", out="out", int8=True, fp16=True, engine=True)
    assert {catalog.by_key(k).key for k in everything.planned_outputs()} == {
        f.key for f in catalog.CATALOG
    }
    assert set(everything.int8_targets()) == set(catalog.INT8_TARGETS)


def _names_spelled_outside_catalog() -> list[str]:
    names = {f.name for f in catalog.CATALOG}
    found = []
    for folder in PACKAGE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "catalog.py" and folder == "dmgrd_edge":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in names:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    return found


def test_no_model_file_name_is_written_out_elsewhere():
    """A file name as a string literal in code outside the catalog would be a second table
    (names inside longer texts, such as help strings, are documentation and allowed)."""
    assert _names_spelled_outside_catalog() == []
