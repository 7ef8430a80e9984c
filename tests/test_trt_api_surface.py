"""The project's use of the tensorrt API and the fakes' names, checked against the Python
surface of the real bindings of each version (recorded by scripts/trt_api_surface.py into
tests/data/trt_api/, so nothing is downloaded here)."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "trt_api_surface", ROOT / "scripts" / "trt_api_surface.py"
)
surface_tool = importlib.util.module_from_spec(spec)
sys.modules["trt_api_surface"] = surface_tool  # dataclasses look the module up
spec.loader.exec_module(surface_tool)

SURFACES = surface_tool.load_surfaces()

# What each version lacks of the project's uses, and why the project never reaches it there.
ABSENT_BY_DESIGN = {
    8: {
        # build_engine sets it only when hasattr(..., "STRONGLY_TYPED") found it (>= 10)
        "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
    },
    10: set(),
    11: {
        # 11 is always strongly typed: network_flags sets no flag, build_engine sets no
        # precision flag and pins no layer (pin_fp32_layers runs only on weakly typed networks)
        "BuilderFlag.FP16",
        "BuilderFlag.INT8",
        "BuilderFlag.OBEY_PRECISION_CONSTRAINTS",
        "ILayer.precision",
        "ILayer.set_output_type",
        # network_flags adds EXPLICIT_BATCH below 10 only
        "NetworkDefinitionCreationFlag.EXPLICIT_BATCH",
    },
}


@pytest.fixture(scope="module")
def uses():
    return surface_tool.used_names(SURFACES)


def test_every_recorded_version_is_present_and_complete():
    assert sorted(SURFACES, key=surface_tool.version_key) == list(surface_tool.VERSIONS)
    for version, surface in SURFACES.items():
        assert surface["version"] == version
        names = surface["names"]
        assert names["Builder"]["kind"] == "class" and names["BuilderFlag"]["kind"] == "enum"
        assert "create_network" in names["Builder"]["members"]
        assert names["nptype"]["kind"] == "function"  # from the package's __init__.py


def test_the_walk_finds_the_engine_builder_and_backend_calls(uses):
    labels = {u.label for u in uses}
    # a few uses reached only through types the walk follows (returns, lists, self.x)
    for expected in (
        "IBuilderConfig.set_timing_cache(ignore_mismatch=)",
        "ILayer.get_output",  # network.get_layer(i) -> ILayer, through a list comprehension
        "ITensor.dtype",
        "IExecutionContext.execute_async_v3",  # self.context, set in another method
        "Runtime.DLA_core",
        "ICudaEngine.get_tensor_profile_shape",
        "Logger.WARNING",
        "nptype",
    ):
        assert expected in labels
    writes = {u.label for u in uses if u.how == "write"}
    assert {"IBuilderConfig.DLA_core", "Runtime.DLA_core", "ILayer.precision"} <= writes


@pytest.mark.parametrize("version", surface_tool.VERSIONS)
def test_the_project_uses_only_names_the_version_has(version, uses):
    missing = set(surface_tool.missing_uses(SURFACES[version], uses))
    major = int(version.split(".")[0])
    assert missing == ABSENT_BY_DESIGN[major]


@pytest.mark.parametrize("fake_version", sorted(surface_tool.FAKE_REFERENCE))
def test_the_fakes_names_and_values_are_the_real_ones(fake_version, uses):
    surface = SURFACES[surface_tool.FAKE_REFERENCE[fake_version]]
    fake = surface_tool.fake_names(fake_version)
    checked, problems = surface_tool.fake_problems(fake, surface)
    assert problems == [] and checked > 100
    assert surface_tool.fake_lacks(fake, surface, uses) == []


def walk(source: str, tmp_path: Path):
    path = surface_tool.ROOT / "tests" / "made_up_for_the_walk.py"
    tree = ast.parse(source)
    return surface_tool.Walker(surface_tool.Types(SURFACES), path, tree).run()


def test_the_walk_follows_types_and_reports_wrong_names(tmp_path):
    source = """
import tensorrt as trt

def helper(network):
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    for layer in layers:
        layer.get_output(0).dtyp

class Thing:
    def __init__(self):
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))

    def load(self, blob):
        engine = self.runtime.deserialize_cuda_engine(blob)
        engine.create_execution_context().set_input_shap("image", (1, 3, 8, 8))
        self.runtime.num_DLA_cores = 2

def build():
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(0)
    helper(network)
    config = builder.create_builder_config()
    config.set_timing_cache(None, ignore_mismach=False)
    hasattr(trt.BuilderFlag, "NO_SUCH_FLAG")
"""
    found = walk(source, tmp_path)
    missing = surface_tool.missing_uses(SURFACES["10.3.0"], sorted(found, key=str))
    assert missing == [
        "IBuilderConfig.set_timing_cache(ignore_mismach=)",  # a misspelt keyword
        "IExecutionContext.set_input_shap",  # through a method's declared return type
        "ITensor.dtyp",  # through a parameter, a list comprehension and a loop
        "Runtime.num_DLA_cores",  # read-only property written, through self.runtime
    ]
    guarded = surface_tool.missing_uses(SURFACES["10.3.0"], sorted(found, key=str), True)
    assert guarded == ["BuilderFlag.NO_SUCH_FLAG"]


def test_status_records_the_table():
    status = (ROOT / "docs" / "STATUS.md").read_text()
    table = surface_tool.table(SURFACES, surface_tool.used_names(SURFACES))
    rows = [re.sub(r"\s+", " ", row) for row in table.splitlines()[2:]]
    for row in rows:
        assert row in status
