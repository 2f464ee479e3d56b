"""Layers (NHWC, float32). Register your own with ``@register_layer``."""
# re-exported (``from dpnn.layers import Conv2D``)
from .base import LAYER_REGISTRY, Layer, layer_from_config, register_layer, walk_layers  # noqa: F401
from .conv import Conv2D, Dense  # noqa: F401
from .normalization import BatchNorm2D
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .residual import Residual  # noqa: F401
from .simple import Activation, Dropout, Flatten  # noqa: F401


def execution_order(layers: list[Layer]) -> list[int]:
    """The order forward runs the layers in (backward runs it reversed): the model's order,
    except that a ReLU directly followed by a max pool runs after the pool.

    ReLU is monotone, so max(relu(z)) = relu(max(z)) and the gradients agree too (a window
    whose maximum is <= 0 gets zero gradient either way); after the pool the ReLU touches 4x
    fewer elements in both passes. Saved architectures keep the order the user wrote. Only the
    model's own list is reordered: a container (Residual) runs its layers as written.
    """
    order = list(range(len(layers)))
    for k in range(len(layers) - 1):
        a, b = layers[order[k]], layers[order[k + 1]]
        if isinstance(a, Activation) and a.func == "relu" and isinstance(b, MaxPool2D):
            order[k], order[k + 1] = order[k + 1], order[k]
    return order


# Keras's names for the same classes (``from dpnn import layers; layers.MaxPooling2D(...)``), also
# accepted as class names in an architecture file; a saved model names the dpnn class.
KERAS_ALIASES = {"MaxPooling2D": MaxPool2D, "AveragePooling2D": AvgPool2D,
                 "GlobalAveragePooling2D": GlobalAvgPool2D, "BatchNormalization": BatchNorm2D}
MaxPooling2D, AveragePooling2D = MaxPool2D, AvgPool2D
GlobalAveragePooling2D, BatchNormalization = GlobalAvgPool2D, BatchNorm2D
for _name, _cls in KERAS_ALIASES.items():
    register_layer(_cls, name=_name)
