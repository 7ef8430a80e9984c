"""The DM-GRD network in plain torch (no training glue). Importing this package imports torch."""

from .backbones import BACKBONES, BackboneSpec, create_teacher
from .dmgrd import DMGRD, AnomalyOutput, TrainingFeatures

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "create_teacher",
    "DMGRD",
    "AnomalyOutput",
    "TrainingFeatures",
]
