"""Layers (NHWC, float32). Register your own with ``@register_layer``."""
from .base import LAYER_REGISTRY, Layer, layer_from_config, register_layer
from .conv import Conv2D, Dense
from .normalization import BatchNorm2D
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .simple import Activation, Dropout, Flatten

__all__ = ["Layer", "register_layer", "layer_from_config", "LAYER_REGISTRY", "Conv2D", "Dense",
           "Activation", "Flatten", "Dropout", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D",
           "BatchNorm2D"]
