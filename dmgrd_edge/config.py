"""Configuration dataclasses that travel with checkpoints and bundles as JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from . import checks
from .errors import ConfigError, choose

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_RANGE, STD_RANGE = (-1000, 1000), (1e-6, 1000)  # per channel, pixels scaled to [0, 1]

SELECTION_RULES = ("nearest", "authors")
SCORE_MODES = ("topk_mean", "max")
METHODS = ("dmgrd", "knn")
MEMORY_READS = ("image", "patch")
SCORE_SOURCES = ("student", "memory", "combined")
MAP_SCALES = ("mean", "p99", "std")
FUSIONS = ("msff", "linear")
# what the image score is read from: the anomaly map, the student's share of it alone, or
# whichever of the two separates the validation pseudo-anomalies better ("auto", chosen at
# each validation and kept in the checkpoint's weights)
IMAGE_SCORES = ("map", "student", "auto")
LOSS_TERMS = ("ot", "con", "triplet")  # the memory path's terms besides KD
# the paper's model: the student guided by one whole bank image, scored by the student alone
PAPER_MODEL_FIELDS = {
    "method": "dmgrd",
    "use_memory": True,
    "memory_read": "image",
    "score_source": "student",
}
# what a checkpoint written before a field existed meant by it
LEGACY_MODEL_FIELDS = {**PAPER_MODEL_FIELDS, "map_scale": "mean", "image_score": "map"}


def refuse_unknown_fields(
    cls: type, data: dict[str, Any], what: str, written: str = "the checkpoint was written"
) -> None:
    """A record with fields this version's ``cls`` lacks comes from a newer dmgrd-edge."""
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(
            f"{what} has unknown fields {sorted(unknown)}",
            f"{written} by a newer dmgrd-edge; upgrade",
        )


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything `preprocess()` needs; stored in checkpoints and bundle manifests."""

    height: int = 256
    width: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color_order: str = "RGB"
    interpolation: str = "linear"

    def __post_init__(self):
        checks.integer("preprocess height", self.height)
        checks.integer("preprocess width", self.width)
        if self.height < 32 or self.width < 32 or self.height % 32 or self.width % 32:
            raise ConfigError(
                f"image size {self.height}x{self.width} is not supported",
                "use a multiple of 32 that is at least 32 (e.g. 256)",
            )
        # x -> (x - 255 mean) / (255 std) per channel, in float32: bounded means and stds > 0,
        # so that no pixel normalises to infinity
        for name, (lo, hi) in (("mean", MEAN_RANGE), ("std", STD_RANGE)):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or len(values) != 3:
                raise ConfigError(
                    f"preprocess {name} must be 3 numbers (R, G, B), got {values!r}",
                    "give one value per colour channel, e.g. the ImageNet "
                    f"{name} {list(getattr(PreprocessConfig, name))}",
                )
            for value in values:
                checks.number(
                    f"preprocess {name}", value, lo, hi, note="for pixel values scaled to [0, 1]"
                )
            object.__setattr__(self, name, tuple(float(v) for v in values))
        choose("color order", self.color_order, ("RGB", "BGR"))
        choose("interpolation", self.interpolation, ("linear", "area", "nearest"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessConfig":
        refuse_unknown_fields(cls, data, "preprocess config", "it was written")
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The DM-GRD network's shape and inference rules.

    ``method="knn"`` is the training-free nearest-neighbour baseline (teacher and patch
    memory only). ``memory_read`` is how the normal memory guides the student: ``image``
    (the paper: one whole bank image chosen by ``selection``) or ``patch`` (the nearest bank
    patch at every location). ``score_source`` is the anomaly map: the student's distance to
    the teacher, the memory's nearest-patch distance, or both, each on its validation scale.
    """

    backbone: str = "efficientnet_lite0"
    image_size: int = 256
    memory_size: int = 30
    selection: str = "nearest"
    # the defaults chosen on real photographs (docs/BENCHMARKS.md, detection quality): RD's
    # student, unguided, and the memory's nearest-patch distance joins the student's in the
    # score. ``use_memory`` turns the memory's guidance of the student on, ``memory_read``
    # says which guidance.
    use_memory: bool = False
    scale_memory_inputs: bool = True
    score_mode: str = "topk_mean"
    score_topk: int = 100
    blur_sigma: float = 4.0
    # {group name: kept channels} of a pruned model (dmgrd_edge/model/pruning.py); None: not pruned
    pruned_widths: dict[str, int] | None = None
    method: str = "dmgrd"
    memory_read: str = "patch"
    score_source: str = "combined"
    patch_bank_size: int = 2048  # rows per level of the patch memory
    memory_score_levels: tuple[int, ...] = (1, 2)  # teacher levels the memory's map uses
    # combined score: each map is divided by this statistic of its values on validation
    # normals; the standard deviation is the default (docs/METHOD.md, "The default")
    map_scale: str = "std"
    # how the memory-guided features are fused: MSFF (the paper) or a 1x1 projection (ablation)
    fusion: str = "msff"
    # the image score, where the map is combined: from the map ("map"), from the student's
    # share alone ("student", the default: regions are still drawn from the combined map;
    # docs/METHOD.md, docs/BENCHMARKS.md "Detection quality"), or the one of the two that
    # separates the validation pseudo-anomalies better ("auto"); a map that is not combined
    # is its own score
    image_score: str = "student"

    def __post_init__(self):
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ConfigError(
                f"model backbone must be a name, got {self.backbone!r}",
                "e.g. efficientnet_lite0 (`dmgrd-edge backbones` lists them)",
            )
        for name in ("use_memory", "scale_memory_inputs"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(
                    f"model {name} must be true or false, got {value!r}",
                    "re-create the configuration with dmgrd-edge",
                )
        checks.integer("model image_size", self.image_size)
        checks.integer("model memory_size", self.memory_size, 1)
        checks.integer("model score_topk", self.score_topk, 1)
        checks.number("model blur_sigma", self.blur_sigma, 0)
        if self.pruned_widths is not None:
            if not isinstance(self.pruned_widths, dict) or not all(
                isinstance(k, str) for k in self.pruned_widths
            ):
                raise ConfigError(
                    f"model pruned_widths must map group names to widths, got "
                    f"{self.pruned_widths!r}",
                    "prune the checkpoint again",
                )
            for width in self.pruned_widths.values():
                checks.integer("model pruned width", width, 1)
        self._check_choices()
        levels = self.memory_score_levels
        if not isinstance(levels, (list, tuple)) or not all(isinstance(v, int) for v in levels):
            raise ConfigError(
                f"memory score levels must be a list of level numbers, got {levels!r}"
            )
        object.__setattr__(self, "memory_score_levels", tuple(levels))
        if not self.memory_score_levels or any(
            v not in (0, 1, 2) for v in self.memory_score_levels
        ):
            raise ConfigError(
                f"memory score levels must be a non-empty subset of 0, 1, 2, "
                f"got {list(self.memory_score_levels)}"
            )
        checks.integer("model patch_bank_size", self.patch_bank_size, 16)
        if self.method == "knn" and self.score_source != "memory":
            raise ConfigError(
                "the nearest-neighbour baseline scores with its memory only",
                "use score_source='memory' with method='knn'",
            )
        choose("memory selection rule", self.selection, SELECTION_RULES)
        choose("score mode", self.score_mode, SCORE_MODES)
        if self.selection == "authors" and self.memory_size != 30:
            raise ConfigError(
                f"the authors' selection rule needs memory size 30, got {self.memory_size}",
                "it concatenates the top-10 channels of 3 levels into one 30-vector; "
                "use --selection nearest for other sizes",
            )
        PreprocessConfig(height=self.image_size, width=self.image_size)  # validates size

    def _check_choices(self) -> None:
        choose("method", self.method, METHODS)
        choose("memory read", self.memory_read, MEMORY_READS)
        choose("score source", self.score_source, SCORE_SOURCES)
        choose("map scale", self.map_scale, MAP_SCALES)
        choose("fusion", self.fusion, FUSIONS)
        choose("image score", self.image_score, IMAGE_SCORES)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        refuse_unknown_fields(cls, data, "model config")
        data = {**LEGACY_MODEL_FIELDS, **data}
        return cls(**data)

    @property
    def uses_patch_memory(self) -> bool:
        return self.method == "knn" or self.guided_by_patches or self.score_source != "student"

    @property
    def guided_by_patches(self) -> bool:
        """The student is guided by the position-free read (``memory_read`` only matters when
        the memory guides the student at all)."""
        return self.method == "dmgrd" and self.use_memory and self.memory_read == "patch"

    @property
    def uses_student(self) -> bool:
        return self.method == "dmgrd"

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(height=self.image_size, width=self.image_size)


def model_config_from_options(**options: Any) -> ModelConfig:
    """A ModelConfig from command-line options where None means "the default for this
    method": the baseline scores with its memory; with ``use_memory=False`` (``--no-memory``)
    the student is plain RD and scores alone unless a memory score is asked for."""
    options = {k: v for k, v in options.items() if v is not None}
    read = options.pop("memory_read", None)
    if options.get("method") == "knn":
        options.setdefault("score_source", "memory")
        options["use_memory"] = False
    elif options.get("use_memory") is False:  # --no-memory: plain RD unless a memory score is asked
        if read not in (None, "none"):
            raise ConfigError(
                "--memory-read guides the student with the memory, which --no-memory turns off",
                "drop one of the two",
            )
        options.setdefault("score_source", "student")
    elif read == "none":  # the command line's "no guidance": RD's student, the default score
        options["use_memory"] = False
    elif read is not None:  # asking for a read is asking for the guidance
        options.update(use_memory=True, memory_read=read)
    return ModelConfig(**options)


@dataclass(frozen=True, kw_only=True)
class SynthesisConfig:
    """How pseudo-anomalies are made (dmgrd_edge/data/synthesis.py): the blend's transparency
    beta ~ U(beta_range), the chance of the Fourier amplitude mix, and the chance that the
    source is another training image instead of a procedural texture (no texture folder).
    Stored in the checkpoint with the training settings; a checkpoint without it was made
    with these defaults."""

    beta_range: tuple[float, float] = (0.1, 0.5)
    fourier_probability: float = 0.5
    other_image_probability: float = 0.2

    def __post_init__(self):
        beta = self.beta_range
        if not isinstance(beta, (list, tuple)) or len(beta) != 2:
            raise ConfigError(
                f"synthesis beta_range must be two numbers LOW,HIGH, got {beta!r}",
                "e.g. --synthesis beta_range=0.1,0.5",
            )
        for value in beta:
            checks.number("synthesis beta_range", value, 0, 1, note="the blend's transparency")
        if beta[0] > beta[1]:
            raise ConfigError(
                f"synthesis beta_range {list(beta)} has LOW above HIGH", "give LOW,HIGH"
            )
        object.__setattr__(self, "beta_range", (float(beta[0]), float(beta[1])))
        for name in ("fourier_probability", "other_image_probability"):
            checks.number(f"synthesis {name}", getattr(self, name), 0, 1, note="a probability")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SynthesisConfig:
        """The settings a checkpoint stored; None (a checkpoint from before they were
        stored): the defaults, which is what such a checkpoint was trained with."""
        if data is None:
            return cls()
        refuse_unknown_fields(cls, data, "synthesis config")
        return cls(**data)

    @classmethod
    def from_options(cls, items: list[str] | tuple[str, ...]) -> SynthesisConfig:
        """From `train --synthesis KEY=VALUE` (repeatable); a range is LOW,HIGH."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for item in items:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in known:
                raise ConfigError(
                    f"bad --synthesis {item!r}",
                    f"give KEY=VALUE with KEY one of {sorted(known)}, e.g. "
                    "--synthesis beta_range=0.2,0.6",
                )
            try:
                parts = [float(v) for v in text.split(",")]
            except ValueError:
                raise ConfigError(f"bad --synthesis {item!r}: not a number", "e.g. 0.5") from None
            ranged = isinstance(known[key].default, tuple)
            if len(parts) != (2 if ranged else 1):
                raise ConfigError(
                    f"bad --synthesis {item!r}",
                    f"{key} takes {'LOW,HIGH' if ranged else 'one number'}",
                )
            values[key] = tuple(parts) if ranged else parts[0]
        return cls(**values)

    def describe(self) -> str:
        return ", ".join(
            f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
            for k, v in self.to_dict().items()
        )


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation settings (defaults are the authors': Adam 0.005, batch 8, 5000 steps)."""

    steps: int = 5000
    batch_size: int = 8
    lr: float = 0.005
    min_lr: float = 1e-4
    warmup_steps: int = 100
    seed: int = 111
    val_fraction: float = 0.1
    val_every: int = 250
    checkpoint_every: int = 250
    anomaly_fraction: float = 0.5
    texture_dir: str | None = None
    amp: bool = True
    channels_last: bool = True
    threads: int = 0
    # weights of the memory path's loss terms (the authors': KD + 0.2 (OT + 0.1 Con) + 0.1 Tri);
    # a weight of 0 is the ablation without that term
    ot_weight: float = 0.2
    con_weight: float = 0.02
    triplet_weight: float = 0.1
    synthesis: SynthesisConfig = dataclasses.field(default_factory=SynthesisConfig)

    def __post_init__(self):
        if not isinstance(self.synthesis, SynthesisConfig):
            raise ConfigError(
                f"train synthesis must be a SynthesisConfig, got {type(self.synthesis).__name__}",
                "build it with SynthesisConfig(...) or TrainConfig.from_dict",
            )
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 2:
            raise ConfigError(
                f"batch size must be >= 2, got {self.batch_size}",
                "each batch holds normal and pseudo-anomalous images",
            )
        if not 0.0 < self.val_fraction < 0.9:
            raise ConfigError(f"validation fraction must be in (0, 0.9), got {self.val_fraction}")
        if not 0.0 < self.anomaly_fraction < 1.0:
            raise ConfigError(f"anomaly fraction must be in (0, 1), got {self.anomaly_fraction}")
        for name in LOSS_TERMS:
            checks.number(f"{name} loss weight", getattr(self, f"{name}_weight"), 0, 100)

    @property
    def loss_weights(self) -> dict[str, float]:
        return {name: getattr(self, f"{name}_weight") for name in LOSS_TERMS}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The settings a checkpoint stored (``metadata.train_config``). Fields this version
        does not know are left out; a checkpoint without ``synthesis`` gets the defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["synthesis"] = SynthesisConfig.from_dict(values.get("synthesis"))
        return cls(**values)


def train_config_from_options(
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    seed: int,
    val_every: int,
    checkpoint_every: int,
    threads: int,
    texture_dir: Any = None,
    amp: bool = True,
    without_loss: tuple[str, ...] = (),
    synthesis: tuple[str, ...] = (),
) -> TrainConfig:
    """A TrainConfig from `train`'s options, each number checked under its option's name
    (the warm-up is cut to the steps); the loss terms in ``without_loss`` get weight 0;
    ``synthesis`` holds `--synthesis KEY=VALUE` items (SynthesisConfig.from_options)."""
    checks.integer("--steps", steps, 1)
    checks.integer(
        "--batch-size", batch_size, 2, note="each batch holds normal and pseudo-anomalous images"
    )
    checks.number("--lr", lr, 0, lo_open=True)
    checks.integer("--warmup-steps", warmup_steps, 0)
    checks.integer("--seed", seed, 0)
    checks.integer("--val-every", val_every, 1)
    checks.integer("--checkpoint-every", checkpoint_every, 1)
    checks.integer("--threads", threads, 0, note=checks.AUTO)
    for term in without_loss:
        choose("--without-loss term", term, LOSS_TERMS)
    return TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=min(warmup_steps, steps),
        seed=seed,
        val_every=val_every,
        checkpoint_every=checkpoint_every,
        texture_dir=str(texture_dir) if texture_dir else None,
        amp=amp,
        threads=threads,
        synthesis=SynthesisConfig.from_options(synthesis),
        **{f"{term}_weight": 0.0 for term in without_loss},
    )
