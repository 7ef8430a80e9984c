"""Export options, validated as a whole before any work starts; the files they ask for are
entries of the catalog (dmgrd_edge/catalog.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from dmgrd_edge import checks
from dmgrd_edge.bundle import check_out
from dmgrd_edge.errors import ConfigError, choose

CALIBRATION_METHODS = ("entropy", "minmax", "percentile")


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    @property
    def dynamic(self) -> bool:
        return self.min != self.max

    @classmethod
    def parse(cls, text: str) -> "BatchProfile":
        """'N' (fixed) or 'MIN:OPT:MAX'."""
        parts = str(text).split(":")
        if len(parts) not in (1, 3) or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(
                f"bad batch profile {text!r}",
                "give a fixed batch like 1 or a range MIN:OPT:MAX like 1:4:8",
            )
        values = [int(p) for p in parts] * (3 if len(parts) == 1 else 1)
        lo, opt, hi = values[:3]
        if not 1 <= lo <= opt <= hi:
            raise ConfigError(f"bad batch profile {text!r}", "need 1 <= MIN <= OPT <= MAX")
        return cls(lo, opt, hi)

    def __str__(self) -> str:
        return str(self.min) if not self.dynamic else f"{self.min}:{self.opt}:{self.max}"


def parse_size(text: str) -> int:
    """'512M', '2G', '1073741824' -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ConfigError(f"bad size {text!r}", "use bytes or a number with K, M or G, e.g. 1G")
    return (
        int(match.group(1))
        * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2).upper()]
    )


@dataclass(kw_only=True)
class ExportOptions:
    checkpoint: Path
    out: Path
    int8: bool = False
    fp16: bool = False
    engine: bool = False
    calib_data: Path | None = None
    calib_dataset: str | None = None
    calib_category: str | None = None
    calib_count: int = 300
    calib_method: str = "entropy"
    calib_pseudo: bool = False
    max_drop: float | None = None
    int8_teacher: bool = False
    int8_cpu: bool = True
    batch: BatchProfile = field(default_factory=lambda: BatchProfile(1, 1, 8))
    dla_core: int | None = None
    workspace: int = 1 << 30
    guard_count: int = 40
    seed: int = 0

    def validate(self) -> "ExportOptions":
        checks.integer("--calib-count", self.calib_count, 1)
        checks.number(
            "--max-drop",
            self.max_drop,
            0,
            lo_open=True,
            optional=True,
            note="points of I-AUC / PRO@0.3",
        )
        checks.integer("--dla-core", self.dla_core, 0, optional=True)
        checks.integer("--guard-count", self.guard_count, 4)
        if not Path(self.checkpoint).is_file():
            raise ConfigError(
                f"checkpoint not found: {self.checkpoint}", "train one with `dmgrd-edge train`"
            )
        check_out(self.out)  # a file or a folder of other things is refused before any work
        choose("calibration method", self.calib_method, CALIBRATION_METHODS)
        if self.max_drop is not None and not self.int8:
            raise ConfigError("--max-drop applies to INT8 only", "add --int8 or drop --max-drop")
        if self.int8_teacher and not self.int8:
            raise ConfigError("--int8-teacher applies to INT8 only", "add --int8")
        if self.calib_pseudo and not self.int8:
            raise ConfigError("--calib-pseudo applies to INT8 calibration only", "add --int8")
        if self.dla_core is not None:
            if not self.engine:
                raise ConfigError(
                    "--dla-core needs --engine", "DLA engines are built on the Jetson with --engine"
                )
            if self.batch.dynamic:
                raise ConfigError("DLA needs a fixed batch", "use e.g. --batch 1 with --dla-core")
            if not (self.int8 or self.fp16):
                raise ConfigError("DLA runs FP16 or INT8 only", "add --int8 or --fp16")
        if self.workspace < (1 << 20):
            raise ConfigError(
                f"workspace {self.workspace} bytes is too small",
                "give at least 1M, e.g. --workspace 1G",
            )
        return self

    def int8_targets(self) -> list[str]:
        """Consumers of the INT8 files to write (calib/quantize.py): TensorRT always, the
        ONNX Runtime CPU provider unless --no-int8-cpu."""
        return ["tensorrt"] + (["cpu"] if self.int8_cpu else []) if self.int8 else []

    @property
    def engine_precision(self) -> str:
        """The precision of the engine ``--engine`` builds: the lowest the bundle has."""
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"

    def planned_outputs(self) -> list[str]:
        """Catalog keys of the files this export writes."""
        names = ["onnx-fp32"]
        names += ["onnx-int8"] if self.int8 else []
        names += ["onnx-int8-cpu"] if self.int8 and self.int8_cpu else []
        names += ["onnx-fp16"] if self.fp16 else []
        names += ["engine"] if self.engine else []
        return names
