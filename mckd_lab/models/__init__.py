"""Models: the multi-modal network (encode, fill, decode) and its backbones (compact, reference)."""

from mckd_lab.models.blocks import ClassificationHead
from mckd_lab.models.network import Encoded, ModelOutput, MultiModalNet, build_segmentation_network

__all__ = ["ClassificationHead", "Encoded", "ModelOutput", "MultiModalNet", "build_segmentation_network"]
