"""Every layer and loss against central differences (float64, every element): dpnn.gradcheck."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dpnn import (
    Activation,
    AvgPool2D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    MaxPool2D,
    Residual,
)
from dpnn.gradcheck import GradientMismatch, check_layer, check_loss, max_error, separated_values
from dpnn.losses import BinaryCrossentropy, CategoricalCrossentropy


def bn_with_running_stats(input_shape):
    """A built BatchNorm2D whose running statistics are far from the (0, 1) defaults."""
    layer = BatchNorm2D()
    layer.build((None,) + input_shape[1:])
    C = input_shape[-1]
    layer.state["running_mean"][...] = np.linspace(-0.5, 0.7, C)
    layer.state["running_var"][...] = np.linspace(0.3, 2.5, C)
    return layer


# (id, layer factory, input shape, training)
LAYER_CASES = [
    ("conv3x3-same-s1", lambda: Conv2D(3, 3), (2, 5, 5, 2), True),
    ("conv3x3-valid-s1", lambda: Conv2D(3, 3, padding="valid"), (2, 5, 6, 2), True),
    ("conv3x3-same-s2", lambda: Conv2D(3, 3, stride=2), (2, 6, 6, 2), True),
    ("conv5x5-valid-s2", lambda: Conv2D(2, 5, stride=2, padding="valid"), (1, 9, 8, 2), True),
    ("conv1x1", lambda: Conv2D(4, 1), (2, 3, 3, 3), True),
    ("conv2x3-kernel", lambda: Conv2D(3, (2, 3)), (2, 4, 5, 2), True),
    ("conv-no-bias", lambda: Conv2D(3, 3, use_bias=False), (2, 4, 4, 2), True),
    ("conv-same-s2-odd", lambda: Conv2D(2, 3, stride=2), (2, 7, 5, 2), True),
    ("conv4x4-same-s3-odd", lambda: Conv2D(2, 4, stride=3), (1, 7, 8, 2), True),
    ("conv4x4-same-s1-asymmetric", lambda: Conv2D(2, 4), (2, 5, 6, 2), True),
    ("conv2x2-valid-s1", lambda: Conv2D(3, 2, padding="valid"), (2, 4, 5, 2), True),
    ("conv-fused-relu", lambda: Conv2D(3, 3, activation="relu"), (2, 5, 5, 2), True),
    ("conv-fused-relu-s2", lambda: Conv2D(3, 3, stride=2, activation="relu"), (2, 6, 5, 2), True),
    ("conv-dilation2", lambda: Conv2D(3, 3, dilation_rate=2), (2, 7, 6, 2), True),
    ("conv-dilation-2x1-valid", lambda: Conv2D(2, 2, dilation_rate=(2, 1), padding="valid"), (2, 5, 4, 2), True),
    ("conv-groups2", lambda: Conv2D(4, 3, groups=2), (2, 4, 5, 4), True),
    ("conv-strides-2x1", lambda: Conv2D(3, 3, strides=(2, 1)), (2, 6, 5, 2), True),
    ("conv-int-padding", lambda: Conv2D(2, 3, padding=2, use_bias=False), (1, 4, 4, 2), True),
    ("conv-pair-padding-relu", lambda: Conv2D(4, (3, 2), padding=((1, 0), (2, 1)), groups=2, strides=(1, 2),
                                              dilation_rate=(1, 2), activation="relu"), (2, 5, 6, 2), True),
    ("dense", lambda: Dense(4), (3, 5), True),
    ("dense-no-bias", lambda: Dense(3, use_bias=False), (4, 6), True),
    ("dense-fused-relu", lambda: Dense(5, activation="relu"), (4, 6), True),
    ("relu", lambda: Activation("relu"), (3, 7), True),
    ("relu-4d", lambda: Activation("relu"), (2, 3, 3, 2), True),
    ("sigmoid", lambda: Activation("sigmoid"), (3, 7), True),
    ("tanh", lambda: Activation("tanh"), (3, 7), True),
    ("softmax", lambda: Activation("softmax"), (4, 6), True),
    ("linear", lambda: Activation("linear"), (3, 5), True),
    ("flatten", lambda: Flatten(), (2, 3, 4, 2), True),
    ("maxpool2x2-fast", lambda: MaxPool2D(2), (2, 6, 4, 3), True),
    ("maxpool3x3-s2-overlap", lambda: MaxPool2D(3, 2), (2, 7, 7, 2), True),
    ("maxpool2x2-same-odd", lambda: MaxPool2D(2, padding="same"), (2, 5, 7, 2), True),
    ("maxpool3x3-s2-same", lambda: MaxPool2D(3, 2, padding="same"), (2, 6, 5, 2), True),
    ("maxpool2x2-valid-odd", lambda: MaxPool2D(2), (2, 5, 7, 2), True),
    ("maxpool-2x3-s1", lambda: MaxPool2D((2, 3), 1), (1, 4, 5, 2), True),
    ("avgpool2x2", lambda: AvgPool2D(2), (2, 6, 4, 3), True),
    ("avgpool3x3-s2-overlap", lambda: AvgPool2D(3, 2), (2, 7, 7, 2), True),
    ("avgpool2x2-same-odd", lambda: AvgPool2D(2, padding="same"), (2, 5, 7, 2), True),
    ("avgpool3x3-s2-same", lambda: AvgPool2D(3, 2, padding="same"), (2, 6, 5, 2), True),
    ("avgpool2x2-valid-odd", lambda: AvgPool2D(2), (2, 5, 7, 2), True),
    ("global-avgpool", lambda: GlobalAvgPool2D(), (2, 3, 5, 4), True),
    ("dropout-train", lambda: Dropout(0.4), (4, 3, 3, 2), True),
    ("dropout-2d-train", lambda: Dropout(0.25), (5, 8), True),
    ("dropout-inference", lambda: Dropout(0.4), (3, 6), False),
    ("batchnorm-4d-train", lambda: BatchNorm2D(), (3, 3, 2, 4), True),
    ("batchnorm-2d-train", lambda: BatchNorm2D(), (6, 4), True),
    ("batchnorm-no-center-no-scale", lambda: BatchNorm2D(center=False, scale=False, epsilon=1e-3), (3, 3, 2, 4), True),
    ("batchnorm-scale-only", lambda: BatchNorm2D(center=False), (6, 4), True),
    ("batchnorm-4d-inference", lambda: bn_with_running_stats((3, 3, 2, 4)), (3, 3, 2, 4), False),
    ("batchnorm-2d-inference", lambda: bn_with_running_stats((6, 4)), (6, 4), False),
    ("residual-identity", lambda: Residual([Conv2D(2, 3), Activation("tanh"), Conv2D(2, 3)]), (2, 4, 4, 2), True),
    ("residual-projection-bn", lambda: Residual(
        [Conv2D(3, 3, stride=2), BatchNorm2D(), Activation("tanh"), Conv2D(3, 3, use_bias=False)],
        shortcut=[Conv2D(3, 1, stride=2), BatchNorm2D()], activation="sigmoid"), (3, 5, 5, 2), True),
    ("residual-projection-bn-inference", lambda: Residual(
        [Conv2D(3, 3, stride=2), BatchNorm2D()], shortcut=[Conv2D(3, 1, stride=2), BatchNorm2D()],
        activation="tanh"), (2, 5, 5, 2), False),
    ("residual-dropout-dense", lambda: Residual([Dense(4), Dropout(0.3)], shortcut=[Dense(4)], activation="tanh"),
     (4, 5), True),
    ("residual-nested", lambda: Residual([Residual([Dense(3)], activation="tanh"), Dense(3)]), (3, 3), True),
]

LABELS = np.array([2, 0, 4, 1, 4])
LOSS_CASES = [
    ("cce-int", "categorical_crossentropy", (5, 5), LABELS, None),
    ("cce-one-hot", "cce", (5, 5), np.eye(5)[LABELS], None),
    ("cce-global-denominator", "cce", (5, 5), LABELS, 16),
    ("mse-targets", "mse", (4, 3), np.linspace(-1, 1, 12).reshape(4, 3), None),
    ("mse-int-labels", "mse", (5, 5), LABELS, None),
    ("mse-global-denominator", "mse", (4, 3), np.linspace(-1, 1, 12).reshape(4, 3), 10),
    ("cce-soft-targets", "cce", (5, 5), np.random.default_rng(3).dirichlet(np.ones(5), 5), None),
    ("cce-unnormalised-targets", "cce", (5, 5), np.random.default_rng(4).random((5, 5)), 8),
    ("cce-label-smoothing", CategoricalCrossentropy(label_smoothing=0.2), (5, 5), LABELS, None),
    ("scce", "sparse_categorical_crossentropy", (5, 5), LABELS, 7),
    ("bce-logits", "binary_crossentropy", (4, 3), np.random.default_rng(5).random((4, 3)), None),
    ("bce-one-output-smoothing", BinaryCrossentropy(label_smoothing=0.1), (6, 1), np.array([0, 1, 1, 0, 1, 0]), 9),
]


@pytest.mark.parametrize("make_layer, input_shape, training",
                         [c[1:] for c in LAYER_CASES], ids=[c[0] for c in LAYER_CASES])
def test_layer_gradients(make_layer, input_shape, training):
    report = check_layer(make_layer(), input_shape, training=training)   # raises on mismatch
    assert report.ok and report.max_abs < 1e-6
    assert "x" in report.arrays


@pytest.mark.parametrize("loss, shape, labels, denominator",
                         [c[1:] for c in LOSS_CASES], ids=[c[0] for c in LOSS_CASES])
def test_loss_gradients(loss, shape, labels, denominator):
    report = check_loss(loss, shape, labels, denominator=denominator)
    assert report.ok and report.max_abs < 1e-7


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(kind=st.sampled_from(["conv", "max", "avg"]), k=st.integers(1, 4), stride=st.integers(1, 3),
       padding=st.sampled_from(["same", "valid"]), h=st.integers(1, 7), w=st.integers(1, 7),
       c=st.integers(1, 2))
def test_window_layers_over_random_geometry(kind, k, stride, padding, h, w, c):
    """Any kernel/stride/padding/size combination, including stride > kernel and 1-pixel inputs."""
    assume(padding == "same" or (h >= k and w >= k))
    if kind == "conv":
        layer = Conv2D(2, k, stride, padding)
    else:
        layer = (MaxPool2D if kind == "max" else AvgPool2D)(k, stride, padding)
    check_layer(layer, (2, h, w, c))


def test_dropout_check_really_drops():
    """The Dropout case above is only meaningful if its fixed mask zeroes some units."""
    layer = Dropout(0.4)
    check_layer(layer, (4, 3, 3, 2))
    x = np.ones((4, 3, 3, 2))
    out = layer.forward(x, training=True)
    assert 0 < np.count_nonzero(out == 0) < out.size
    assert np.allclose(out[out != 0], 1 / 0.6)


def test_check_layer_catches_a_wrong_backward():
    class BadTanh(Activation):
        def backward(self, grad):
            return grad * (1 - self._out)          # should be 1 - out**2

    with pytest.raises(GradientMismatch, match=r"x: \d+ of 12 elements differ"):
        check_layer(BadTanh("tanh"), (3, 4))


def test_check_layer_catches_a_wrong_param_gradient():
    class HalfBiasDense(Dense):
        def backward(self, grad):
            dx = super().backward(grad)
            self.grads["b"] *= 0.5
            return dx

    report = check_layer(HalfBiasDense(3), (2, 4), raise_on_mismatch=False)
    assert not report.ok
    assert [f.split(":")[0] for f in report.failures] == ["b"]


def test_check_loss_catches_a_wrong_gradient():
    from dpnn.losses import MeanSquaredError

    class NoTwoMSE(MeanSquaredError):
        def backward(self, denominator=None):
            return super().backward(denominator) / 2

    with pytest.raises(GradientMismatch, match="y_pred"):
        check_loss(NoTwoMSE(), (3, 2), np.zeros((3, 2)))


def test_separated_values_avoid_kinks():
    rng = np.random.default_rng(0)
    for shape in [(2, 5, 7, 2), (3, 5), (1, 9, 9, 1)]:
        v = separated_values(shape, rng)
        gaps = np.diff(np.sort(v.ravel()))
        assert v.shape == shape and gaps.min() > 1e-3 and np.abs(v).min() > 1e-3


def test_max_error_prints_like_llm_c():
    lines = []
    err = max_error("dx", np.array([1.0, 2.0]), np.array([1.0, 2.5]), print_fn=lines.append)
    assert err == 0.5 and lines == ["dx: max error 5.000e-01"]
