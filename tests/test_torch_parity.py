"""dpnn against PyTorch: every layer's forward and backward, the losses, optimizer steps, clipping
and the whole seed-cnn. Layers run in float64 here (they compute in their input's dtype)."""
import numpy as np
import pytest

import dpnn
from dpnn import Activation, AvgPool2D, BatchNorm2D, Conv2D, Dense, Flatten, GlobalAvgPool2D, MaxPool2D
from dpnn.losses import BinaryCrossentropy, CategoricalCrossentropy, get_loss
from dpnn.optim import SGD, Adam, regularize
from dpnn.recipe import loss_gradient

torch = pytest.importorskip("torch")
F = torch.nn.functional
torch.set_num_threads(1)


# -- helpers -------------------------------------------------------------------------------
def nchw(x):
    return torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def same_pads(size, k, s):
    """TensorFlow 'same': out = ceil(size / s), the odd pixel of padding goes after."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def torch_pad(x, kh, kw, sh, sw, padding, value=0.0):
    """Explicit F.pad of an NCHW tensor for dpnn's padding rule."""
    if padding == "valid":
        return x
    top, bottom = same_pads(x.shape[2], kh, sh)
    left, right = same_pads(x.shape[3], kw, sw)
    return F.pad(x, (left, right, top, bottom), value=value)


def build64(layer, input_shape, seed=0):
    """Build ``layer`` and give it random float64 params (BatchNorm's gamma too)."""
    rng = np.random.default_rng(seed)
    layer.rng = rng
    layer.build((None,) + tuple(input_shape[1:]))
    for d in (layer.params, layer.grads, layer.state):
        for k in d:
            d[k] = np.array(d[k], dtype=np.float64)
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape)
    return layer


def close(got, want, rtol=1e-10, atol=1e-10):
    np.testing.assert_allclose(got, np.asarray(want), rtol=rtol, atol=atol)


def run_layer(layer, x, training=True, seed=1):
    """dpnn forward, then backward of a random upstream gradient; returns (out, g, dx)."""
    layer.needs_input_grad = True
    out = layer.forward(x, training)
    g = np.random.default_rng(seed).standard_normal(out.shape)
    return out, g, layer.backward(g.copy())


# -- layers --------------------------------------------------------------------------------
CONV_CASES = [  # filters, kernel, stride, padding, use_bias, input shape[, fused activation]
    (4, (3, 3), 1, "same", True, (2, 6, 6, 3)),
    (4, (3, 3), 1, "same", True, (2, 6, 6, 3), "relu"),
    (3, (3, 3), 2, "same", True, (2, 7, 6, 2), "relu"),
    (3, (4, 4), 1, "same", True, (2, 5, 6, 2)),
    (3, (2, 2), 1, "valid", False, (2, 5, 4, 2)),
    (4, (3, 3), 1, "valid", True, (2, 6, 7, 3)),
    (3, (3, 3), 2, "same", True, (2, 7, 6, 2)),
    (3, (5, 5), 2, "valid", True, (2, 9, 10, 2)),
    (5, (1, 1), 1, "same", True, (2, 4, 4, 3)),
    (3, (2, 3), 1, "same", True, (2, 5, 6, 2)),
    (3, (3, 3), 1, "same", False, (2, 5, 5, 2)),
    (2, (4, 4), 3, "same", True, (1, 8, 7, 2)),
]


@pytest.mark.parametrize("filters, kernel, stride, padding, use_bias, shape, activation",
                         [c if len(c) == 7 else c + (None,) for c in CONV_CASES])
def test_conv2d(filters, kernel, stride, padding, use_bias, shape, activation):
    layer = build64(Conv2D(filters, kernel, stride, padding, use_bias, activation), shape)
    x = np.random.default_rng(2).standard_normal(shape)
    out, g, dx = run_layer(layer, x)

    xt = nchw(x)
    wt = torch.tensor(layer.params["W"].transpose(3, 2, 0, 1).copy(), requires_grad=True)  # (F, C, KH, KW)
    bt = torch.tensor(layer.params["b"], requires_grad=True) if use_bias else None
    yt = F.conv2d(torch_pad(xt, *kernel, stride, stride, padding), wt, bt, stride=stride)
    yt = torch.relu(yt) if activation == "relu" else yt
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2).copy()))
    close(out, nhwc(yt))
    close(dx, nhwc(xt.grad))
    close(layer.grads["W"], wt.grad.numpy().transpose(2, 3, 1, 0))
    if use_bias:
        close(layer.grads["b"], bt.grad.numpy())


@pytest.mark.parametrize("use_bias, activation", [(True, None), (False, None), (True, "relu")])
def test_dense(use_bias, activation):
    layer = build64(Dense(5, use_bias=use_bias, activation=activation), (4, 7))
    x = np.random.default_rng(2).standard_normal((4, 7))
    out, g, dx = run_layer(layer, x)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.params["W"].T.copy(), requires_grad=True)     # (units, D)
    bt = torch.tensor(layer.params["b"], requires_grad=True) if use_bias else None
    yt = F.linear(xt, wt, bt)
    yt = torch.relu(yt) if activation == "relu" else yt
    yt.backward(torch.tensor(g))
    close(out, yt.detach())
    close(dx, xt.grad)
    close(layer.grads["W"], wt.grad.numpy().T)
    if use_bias:
        close(layer.grads["b"], bt.grad)


TORCH_ACTIVATIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
                     "softmax": lambda t: torch.softmax(t, dim=-1), "linear": lambda t: t}


@pytest.mark.parametrize("func", sorted(TORCH_ACTIVATIONS))
@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 3, 4)])
def test_activation(func, shape):
    x = np.random.default_rng(3).standard_normal(shape)
    out, g, dx = run_layer(Activation(func), x)
    xt = torch.tensor(x, requires_grad=True)
    yt = TORCH_ACTIVATIONS[func](xt)
    yt.backward(torch.tensor(g))
    close(out, yt.detach())
    close(dx, xt.grad)


def test_flatten_is_nhwc_order():
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 5))
    out, g, dx = run_layer(Flatten(), x)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.flatten(xt, 1)
    yt.backward(torch.tensor(g))
    close(out, yt.detach())
    close(dx, xt.grad)


POOL_CASES = [  # pool, stride, padding, input shape
    ((2, 2), None, "valid", (2, 6, 8, 3)),
    ((3, 3), (2, 2), "valid", (2, 7, 7, 2)),
    ((2, 2), None, "same", (2, 5, 7, 2)),
    ((3, 3), (2, 2), "same", (2, 6, 5, 2)),
    ((2, 2), None, "valid", (2, 5, 7, 2)),
    ((2, 3), (1, 2), "same", (1, 5, 6, 2)),
]


@pytest.mark.parametrize("pool, stride, padding, shape", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling(kind, pool, stride, padding, shape):
    layer = (MaxPool2D if kind == "max" else AvgPool2D)(pool, stride, padding)
    layer.build((None,) + shape[1:])
    x = np.random.default_rng(5).standard_normal(shape)
    out, g, dx = run_layer(layer, x)
    s = stride or pool
    xt = nchw(x)
    xp = torch_pad(xt, *pool, *s, padding, value=-np.inf if kind == "max" else 0.0)
    yt = (F.max_pool2d if kind == "max" else F.avg_pool2d)(xp, pool, s)
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2).copy()))
    close(out, nhwc(yt))
    close(dx, nhwc(xt.grad))


def test_global_avg_pool():
    x = np.random.default_rng(6).standard_normal((3, 4, 5, 6))
    out, g, dx = run_layer(GlobalAvgPool2D(), x)
    xt = nchw(x)
    yt = xt.mean(dim=(2, 3))
    yt.backward(torch.tensor(g))
    close(out, yt.detach())
    close(dx, nhwc(xt.grad))


@pytest.mark.parametrize("shape", [(4, 3, 5, 3), (8, 5)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm(shape, training):
    C, momentum = shape[-1], 0.8
    layer = build64(BatchNorm2D(momentum=momentum, eps=1e-3), shape)
    rng = np.random.default_rng(7)
    layer.state["running_mean"][...] = rng.standard_normal(C)
    layer.state["running_var"][...] = rng.uniform(0.5, 2.0, C)
    ref = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
        C, eps=1e-3, momentum=1 - momentum, dtype=torch.float64)   # torch: new = (1-m) old + m batch
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(layer.params["gamma"]))
        ref.bias.copy_(torch.tensor(layer.params["beta"]))
        ref.running_mean.copy_(torch.tensor(layer.state["running_mean"]))
        ref.running_var.copy_(torch.tensor(layer.state["running_var"]))
    ref.train(training)

    x = rng.standard_normal(shape) * 3 + 1
    out, g, dx = run_layer(layer, x, training)
    xt = nchw(x) if len(shape) == 4 else torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2).copy() if len(shape) == 4 else g))
    to_np = nhwc if len(shape) == 4 else (lambda t: t.detach().numpy())
    close(out, to_np(yt))
    close(dx, to_np(xt.grad))
    close(layer.grads["gamma"], ref.weight.grad)
    close(layer.grads["beta"], ref.bias.grad)
    close(layer.state["running_mean"], ref.running_mean)
    close(layer.state["running_var"], ref.running_var)


# -- losses --------------------------------------------------------------------------------
LABELS = np.array([3, 0, 4, 4, 1, 2])


@pytest.mark.parametrize("one_hot", [False, True])
def test_cross_entropy(one_hot):
    logits = np.random.default_rng(8).standard_normal((6, 5)) * 3
    labels = np.eye(5)[LABELS] if one_hot else LABELS
    loss = get_loss("categorical_crossentropy")
    value = loss.forward(logits, labels)
    grad = loss.backward()
    lt = torch.tensor(logits, requires_grad=True)
    target = torch.tensor(labels) if one_hot else torch.tensor(labels, dtype=torch.long)
    ref = F.cross_entropy(lt, target)
    ref.backward()
    close(value, ref.item())
    close(grad, lt.grad)


def soft_targets(seed=13, n=6, k=5):
    """Probability rows (a teacher's outputs, mixup): no row is one-hot."""
    return np.random.default_rng(seed).dirichlet(np.ones(k), n)


# (name, dpnn loss, torch loss of (logits, targets as given) -> mean, targets, sample weights)
CE_CASES = [
    ("probability-targets", lambda: CategoricalCrossentropy(), lambda z, t: F.cross_entropy(z, t),
     soft_targets, None),
    ("label-smoothing", lambda: CategoricalCrossentropy(label_smoothing=0.2),
     lambda z, t: F.cross_entropy(z, t, label_smoothing=0.2), lambda: LABELS, None),
    ("smoothing-of-probabilities", lambda: CategoricalCrossentropy(label_smoothing=0.1),
     lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1), soft_targets, None),
    # class weights: dpnn/Keras divide the weighted sum by N; PyTorch's mean would divide by the
    # sum of the weights, so its 'sum' / N is the reference
    ("class-weights", lambda: CategoricalCrossentropy(),
     lambda z, t: F.cross_entropy(z, t, weight=torch.tensor(CLASS_W), reduction="sum") / len(t),
     lambda: LABELS, lambda: CLASS_W[LABELS]),
    ("sample-weights-soft", lambda: CategoricalCrossentropy(),
     lambda z, t: (F.cross_entropy(z, t, reduction="none") * torch.tensor(SAMPLE_W)).sum() / len(t),
     soft_targets, lambda: SAMPLE_W),
    ("binary-logits-weighted", lambda: BinaryCrossentropy(from_logits=True),
     lambda z, t: (F.binary_cross_entropy_with_logits(z, t, reduction="none").mean(1)
                   * torch.tensor(SAMPLE_W)).sum() / len(t),
     lambda: soft_targets(14), lambda: SAMPLE_W),
]
CLASS_W = np.array([0.5, 2.0, 1.0, 3.0, 0.25])
SAMPLE_W = np.array([0.0, 1.5, 0.3, 2.0, 1.0, 0.7])


def torch_target(targets):
    return torch.tensor(targets, dtype=torch.long) if targets.ndim == 1 else torch.tensor(targets)


@pytest.mark.parametrize("name, make, ref_loss, targets, weights", CE_CASES, ids=[c[0] for c in CE_CASES])
def test_cross_entropy_targets_and_weights(name, make, ref_loss, targets, weights):
    """Loss and gradient w.r.t. the logits, through the recipe every engine runs."""
    logits = np.random.default_rng(8).standard_normal((6, 5)) * 3
    y, w = targets(), (weights() if weights else None)
    total, grad = loss_gradient(make(), logits, y, len(y), w)
    lt = torch.tensor(logits, requires_grad=True)
    ref = ref_loss(lt, torch_target(y))
    ref.backward()
    close(total / len(y), ref.item())
    close(grad, lt.grad)


def test_one_training_step_with_soft_targets_smoothing_and_class_weights():
    """A Dense classifier, one SGD step of fit: the same parameters as torch's step. Keras's
    class_weight weighs a sample by its class (w[y] * CE); with label smoothing that is not
    torch's weight=, which weighs each class's term of the smoothed sum, so the reference
    weighs torch's per-sample losses."""
    rng = np.random.default_rng(15)
    x, y = rng.standard_normal((6, 4)), LABELS
    model = dpnn.Model([Dense(5)], seed=0).compile(CategoricalCrossentropy(label_smoothing=0.1), "sgd", lr=0.5)
    model.build((1, 4))
    W, b = (torch.tensor(np.array(model.layers[0].params[k], np.float64), requires_grad=True) for k in "Wb")
    model.fit(x.astype(np.float32), y, epochs=1, batch_size=6, shuffle=False, verbose=0,
              class_weight=dict(enumerate(CLASS_W)))
    loss = F.cross_entropy(torch.tensor(x) @ W + b, torch.tensor(y), label_smoothing=0.1, reduction="none")
    ((loss * torch.tensor(CLASS_W[y])).sum() / 6).backward()
    close(model.layers[0].params["W"], (W - 0.5 * W.grad).detach(), rtol=1e-5, atol=1e-6)
    close(model.layers[0].params["b"], (b - 0.5 * b.grad).detach(), rtol=1e-5, atol=1e-6)


def test_mse():
    rng = np.random.default_rng(9)
    pred, target = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    loss = get_loss("mse")
    value = loss.forward(pred, target)
    grad = loss.backward()
    pt = torch.tensor(pred, requires_grad=True)
    ref = F.mse_loss(pt, torch.tensor(target))
    ref.backward()
    close(value, ref.item())
    close(grad, pt.grad)


# -- optimizers and clipping ------------------------------------------------------------------
def test_sgd_momentum_steps_with_weight_decay():
    """Several steps with different gradients; torch gets the raw gradient and decays itself."""
    rng = np.random.default_rng(10)
    p = rng.standard_normal(37)
    pt = torch.tensor(p.copy(), requires_grad=True)
    opt, ref = SGD(lr=0.1, momentum=0.9), torch.optim.SGD([pt], lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        g = rng.standard_normal(37)
        pt.grad = torch.tensor(g.copy())
        regularize(p, g, weight_decay=0.01)
        opt.step([(p, g)])
        ref.step()
    close(p, pt.detach())


def test_adam_steps_with_weight_decay():
    """Adam's L2 weight decay (grad += wd * param) is torch.optim.Adam's, not AdamW's."""
    rng = np.random.default_rng(11)
    p = rng.standard_normal(37)
    pt = torch.tensor(p.copy(), requires_grad=True)
    opt = Adam(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6)
    ref = torch.optim.Adam([pt], lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
    for _ in range(4):
        g = rng.standard_normal(37)
        pt.grad = torch.tensor(g.copy())
        regularize(p, g, weight_decay=0.05)
        opt.step([(p, g)])
        ref.step()
    close(p, pt.detach())
    state = ref.state[pt]
    close(opt.slots[0]["m"], state["exp_avg"])
    close(opt.slots[0]["v"], state["exp_avg_sq"])


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_norm(max_norm):
    rng = np.random.default_rng(12)
    shapes = [(3, 4), (4,), (2, 2, 3)]
    grads = [rng.standard_normal(s) for s in shapes]
    ts = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    for t, g in zip(ts, grads):
        t.grad = torch.tensor(g.copy())
    flat = np.concatenate([g.ravel() for g in grads])
    norm = regularize(np.zeros_like(flat), flat, clip_norm=max_norm)
    ref_norm = torch.nn.utils.clip_grad_norm_(ts, max_norm)
    close(norm, ref_norm.item())
    close(flat, np.concatenate([t.grad.numpy().ravel() for t in ts]))


# -- the whole seed-cnn ---------------------------------------------------------------------
def seed_cnn():
    return dpnn.Model([Conv2D(32, 3), Activation("relu"), MaxPool2D(2), Conv2D(64, 3),
                       Activation("relu"), MaxPool2D(2), Flatten(), Dense(128), Activation("relu"),
                       Dense(10)], seed=0)


class TorchSeedCNN(torch.nn.Module):
    """The same network in NCHW; Flatten permutes back to NHWC so Dense weights line up."""

    def __init__(self, model):
        super().__init__()
        conv1, conv2, dense1, dense2 = (model.layers[i] for i in (0, 3, 7, 9))
        def as_t(a):
            return torch.nn.Parameter(torch.tensor(np.array(a, np.float64)))
        self.w1, self.b1 = as_t(conv1.params["W"].transpose(3, 2, 0, 1)), as_t(conv1.params["b"])
        self.w2, self.b2 = as_t(conv2.params["W"].transpose(3, 2, 0, 1)), as_t(conv2.params["b"])
        self.w3, self.b3 = as_t(dense1.params["W"].T), as_t(dense1.params["b"])
        self.w4, self.b4 = as_t(dense2.params["W"].T), as_t(dense2.params["b"])

    def forward(self, x):
        x = F.max_pool2d(torch.relu(F.conv2d(x, self.w1, self.b1, padding=1)), 2)
        x = F.max_pool2d(torch.relu(F.conv2d(x, self.w2, self.b2, padding=1)), 2)
        x = torch.flatten(x.permute(0, 2, 3, 1), 1)
        return F.linear(torch.relu(F.linear(x, self.w3, self.b3)), self.w4, self.b4)


def test_seed_cnn_forward_backward():
    """dpnn's real float32 path against a float64 torch model with the same weights."""
    model = seed_cnn().compile("cce", "adam")
    rng = np.random.default_rng(13)
    x = rng.uniform(0, 1, (6, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 6)
    model.build(x.shape)
    ref = TorchSeedCNN(model)

    logits = model.forward(x, training=True)
    loss = model.loss.forward(logits, y)
    model.backward(model.loss.backward())
    lt = ref(torch.tensor(x.transpose(0, 3, 1, 2).astype(np.float64)))
    ref_loss = F.cross_entropy(lt, torch.tensor(y))
    ref_loss.backward()

    def near(got, want):
        want = want.detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

    near(logits, lt)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    def to_nhwc(t):
        return t.permute(2, 3, 1, 0)                  # (F, C, KH, KW) -> (KH, KW, C, F)
    expected = {0: (to_nhwc(ref.w1.grad), ref.b1.grad), 3: (to_nhwc(ref.w2.grad), ref.b2.grad),
                7: (ref.w3.grad.T, ref.b3.grad), 9: (ref.w4.grad.T, ref.b4.grad)}
    for i, (dw, db) in expected.items():
        near(model.layers[i].grads["W"], dw)
        near(model.layers[i].grads["b"], db)
