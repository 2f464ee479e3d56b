"""Keras's optimizers held to Keras's own tests (keras/src/optimizers/*_test.py: single steps,
weight decay, golden trajectories, bad arguments) and to PyTorch (several steps against
torch.optim), ``learning_rate`` settable on every engine, and the hyperparameter checks of
issue 30 ("compile accepts weight_decay=nan, lr=inf, beta1=nan, beta2=2")."""
from __future__ import annotations

import math

import numpy as np
import pytest

import dpnn
import dpnn.keras as keras
from dpnn.callbacks import Callback
from dpnn.optimizers import SGD, Adam, AdamW, RMSprop

from conftest import cnn


def step(opt, var, grads):
    """One apply_gradients of Keras's tests: var and grads float32, var updated in place."""
    var = np.asarray(var, np.float32)
    opt.step([(var, np.asarray(grads, np.float32).copy())])
    return var


# -- Keras's tests, translated -----------------------------------------------------------------
@pytest.mark.parametrize("make, expected", [
    (lambda: keras.optimizers.Adam(learning_rate=0.5), [0.5, 1.5, 2.5, 3.5]),
    (lambda: Adam(learning_rate=0.5), [0.5, 1.5, 2.5, 3.5]),
    (lambda: keras.optimizers.AdamW(learning_rate=0.5), [0.4980, 1.4960, 2.494, 3.492]),
    (lambda: RMSprop(learning_rate=0.5), [-0.5811, 0.4189, 1.4189, 2.4189]),
    (lambda: keras.optimizers.SGD(learning_rate=0.5), [0.5, -1.0, -0.5, 3.0]),
])
def test_keras_single_step(make, expected):
    var = step(make(), [1.0, 2.0, 3.0, 4.0], [1.0, 6.0, 7.0, 2.0])
    np.testing.assert_allclose(var, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls", [keras.optimizers.Adam, keras.optimizers.AdamW, RMSprop, SGD])
def test_keras_weight_decay_is_decoupled(cls):
    """Keras's test_weight_decay: three optimizers with weight_decay=0.004, lr 1, zero gradient,
    each step the same variable: 2 * 0.996**3 (the decay is not part of the gradient)."""
    var = np.array([2.0], np.float32)
    for _ in range(3):
        cls(learning_rate=1.0, weight_decay=0.004).step([(var, np.zeros(1, np.float32))])
    assert var[0] == pytest.approx(1.9760959, abs=1e-6)


@pytest.mark.parametrize("make, golden", [
    (lambda: RMSprop(centered=True), [0.9967, 0.9933, 0.9908, 0.9885, 0.9864]),
    (lambda: keras.optimizers.Adam(amsgrad=True), [0.999, 0.9982, 0.9974, 0.9965, 0.9955]),
])
def test_keras_correctness_with_golden(make, golden):
    opt, x = make(), np.ones(10, np.float32)
    opt.step([(x, np.full(10, 0.01, np.float32))])
    for want in golden:
        np.testing.assert_allclose(x, np.full(10, want), rtol=5e-4, atol=5e-4)
        opt.step([(x, np.arange(0.1, 1.1, 0.1, dtype=np.float32)[:10])])


def test_keras_adamw_golden_with_a_large_epsilon():
    """Keras's AdamW golden values (lr 1, weight_decay 0.5, epsilon 2): epsilon is added to
    sqrt(v) as Keras does in keras.optimizers.AdamW; dpnn's own AdamW follows PyTorch."""
    golden = np.array([
        [0.4998] * 10,
        [0.2486, 0.2475, 0.2463, 0.2451, 0.244, 0.2428, 0.2417, 0.2405, 0.2394, 0.2382],
        [0.1223, 0.1198, 0.1174, 0.1149, 0.1124, 0.11, 0.1075, 0.1051, 0.1027, 0.1003],
        [0.0586, 0.0549, 0.0512, 0.0475, 0.0439, 0.0402, 0.0366, 0.033, 0.0294, 0.0258],
        [0.0263, 0.0215, 0.0167, 0.012, 0.0073, 0.0026, -0.0021, -0.0067, -0.0113, -0.0159]])
    opt, x = keras.optimizers.AdamW(learning_rate=1.0, weight_decay=0.5, epsilon=2), np.ones(10, np.float32)
    opt.step([(x, np.full(10, 0.01, np.float32))])
    for want in golden:
        np.testing.assert_allclose(x, want, rtol=5e-4, atol=5e-4)
        opt.step([(x, np.arange(0.1, 1.1, 0.1, dtype=np.float32)[:10])])


def test_keras_argument_names_and_their_checks():
    a = Adam(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5, amsgrad=True)
    assert (a.lr, a.beta1, a.beta2, a.eps, a.amsgrad) == (0.5, 0.5, 0.67, 1e-5, True)
    assert a.learning_rate == 0.5 and a.epsilon == 1e-5
    r = RMSprop(learning_rate=0.5, rho=0.8, momentum=0.05, epsilon=1e-6, centered=True)
    assert r.get_config() == {"lr": 0.5, "rho": 0.8, "epsilon": 1e-6, "momentum": 0.05, "centered": True}
    assert SGD(learning_rate=0.5, momentum=0.06, nesterov=True, weight_decay=0.004).nesterov
    with pytest.raises(TypeError, match="not both"):
        Adam(lr=0.1, learning_rate=0.1)
    with pytest.raises(ValueError, match="momentum"):
        SGD(momentum=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(momentum=2.0)
    with pytest.raises(ValueError, match="weight_decay must be a float"):
        AdamW(learning_rate=1.0, weight_decay=None)
    with pytest.raises(ValueError, match="nesterov=True needs a momentum"):
        SGD(nesterov=True)
    assert keras.optimizers.Adam().epsilon == 1e-7 and keras.optimizers.AdamW().weight_decay == 0.004


def test_the_old_import_path_keeps_every_name():
    import dpnn.optim as old
    for name in ("SGD", "Adam", "Optimizer", "get_optimizer", "regularize", "square_sums", "sum_of_squares",
                 "blocks", "BLOCK", "NORM_BLOCK", "OPTIMIZERS", "sgd", "adam"):
        assert getattr(old, name) is getattr(dpnn.optimizers, name)
    assert dpnn.Adam is Adam and dpnn.RMSprop is RMSprop and dpnn.AdamW is AdamW
    assert keras.optimizers.RMSprop is RMSprop and keras.optimizers.SGD is SGD


# -- bad hyperparameters: one ValueError at construction or compile (issue 30) ----------------
BAD = [
    (Adam, {"beta1": 1.0}), (Adam, {"beta2": 1.0}), (Adam, {"beta2": 2}), (Adam, {"beta1": math.nan}),
    (Adam, {"lr": math.inf}), (Adam, {"lr": -1e-3}), (Adam, {"lr": 0}), (Adam, {"eps": math.nan}),
    (Adam, {"eps": -1.0}), (Adam, {"weight_decay": math.nan}), (Adam, {"weight_decay": -0.1}),
    (Adam, {"beta_1": math.inf}), (SGD, {"lr": math.nan}), (SGD, {"momentum": math.nan}),
    (RMSprop, {"rho": 1.0}), (RMSprop, {"epsilon": math.inf}), (AdamW, {"weight_decay": math.inf}),
]


@pytest.mark.parametrize("cls, kwargs", BAD, ids=[f"{c.__name__}-{k}" for c, k in BAD])
def test_bad_hyperparameters_are_refused_at_construction(cls, kwargs):
    name = {"lr": "learning rate", "beta_1": "beta1"}.get(next(iter(kwargs)), next(iter(kwargs)))
    with pytest.raises(ValueError, match=rf"{name}.* must be (a finite number )?(in|positive|>=)"):
        cls(**kwargs)


@pytest.mark.parametrize("kwargs", [{"weight_decay": math.nan}, {"lr": math.inf}, {"beta1": math.nan},
                                    {"beta2": 2}, {"weight_decay": -1}, {"clip_norm": math.nan},
                                    {"weight_decay": math.inf}, {"lr": -0.1}])
def test_compile_refuses_bad_hyperparameters(kwargs):
    """Issue 30: compile accepted weight_decay=nan, lr=inf, beta1=nan, beta2=2 and fit then
    blamed the learning rate; now compile refuses each in one message naming it."""
    name = next(iter(kwargs)).replace("lr", "learning rate")
    with pytest.raises(ValueError, match=name):
        cnn().compile(optimizer="adam", **kwargs)


def test_learning_rate_setter_checks_and_lr_is_its_alias():
    opt = Adam()
    opt.learning_rate = 0.25
    assert opt.lr == 0.25 and opt.hyperparameters()["lr"] == 0.25
    opt.lr = 0.5
    assert opt.learning_rate == 0.5
    for bad in (math.nan, -1.0, math.inf, "fast"):
        with pytest.raises(ValueError, match="learning rate"):
            opt.learning_rate = bad


def test_compile_without_an_optimizer_picks_adam_and_rmsprop_by_name():
    """dpnn keeps Adam as compile's default (Keras: RMSprop); docs/keras.md says so."""
    assert type(cnn().compile().optimizer) is Adam
    assert type(cnn().compile(optimizer="rmsprop").optimizer) is RMSprop
    assert type(cnn().compile(optimizer="adamw", learning_rate=1e-3).optimizer) is AdamW
    with pytest.raises(TypeError, match="constructor"):
        cnn().compile(optimizer=Adam(), beta1=0.5)


# -- PyTorch: several steps of each against torch.optim (float64) -----------------------------
def torch_steps(ours, make_ref, steps=5, n=37, seed=20, scale=1.0):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n)
    pt = torch.tensor(p.copy(), requires_grad=True)
    ref = make_ref(torch, [pt])
    for _ in range(steps):
        g = rng.standard_normal(n) * scale
        pt.grad = torch.tensor(g.copy())
        ours.step([(p, g)])
        ref.step()
    return p, pt.detach().numpy(), ref.state[pt]


@pytest.mark.parametrize("ours, make_ref", [
    (lambda: RMSprop(lr=0.01, rho=0.9, eps=1e-12),
     lambda t, ps: t.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-12)),
    (lambda: RMSprop(lr=0.01, rho=0.8, momentum=0.9, eps=1e-12),
     lambda t, ps: t.optim.RMSprop(ps, lr=0.01, alpha=0.8, momentum=0.9, eps=1e-12)),
    (lambda: RMSprop(lr=0.01, rho=0.9, centered=True, momentum=0.5, eps=1e-12),
     lambda t, ps: t.optim.RMSprop(ps, lr=0.01, alpha=0.9, centered=True, momentum=0.5, eps=1e-12)),
    (lambda: AdamW(lr=0.01, weight_decay=0.1, beta1=0.8, eps=1e-6),
     lambda t, ps: t.optim.AdamW(ps, lr=0.01, weight_decay=0.1, betas=(0.8, 0.999), eps=1e-6)),
    (lambda: Adam(lr=0.01, weight_decay=0.1),                 # Adam's own weight_decay: decoupled
     lambda t, ps: t.optim.AdamW(ps, lr=0.01, weight_decay=0.1)),
    (lambda: Adam(lr=0.01, amsgrad=True, beta2=0.9),
     lambda t, ps: t.optim.Adam(ps, lr=0.01, amsgrad=True, betas=(0.9, 0.9))),
    (lambda: AdamW(lr=0.01, amsgrad=True, weight_decay=0.05),
     lambda t, ps: t.optim.AdamW(ps, lr=0.01, amsgrad=True, weight_decay=0.05)),
    (lambda: SGD(lr=0.1, momentum=0.9, nesterov=True),
     lambda t, ps: t.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True)),
    (lambda: SGD(lr=0.1, momentum=0.9, weight_decay=0.1),     # decoupled: torch's SGD has none; maximize
     None),
], ids=["rmsprop", "rmsprop-momentum", "rmsprop-centered", "adamw", "adam-decoupled-decay",
        "adam-amsgrad", "adamw-amsgrad", "sgd-nesterov", "sgd-decoupled"])
def test_optimizer_steps_match_pytorch(ours, make_ref):
    if make_ref is None:         # decoupled SGD decay: p * (1 - lr wd) - lr v, checked by hand
        opt, p, v = ours(), np.linspace(-1, 1, 9), np.zeros(9)
        rng, want = np.random.default_rng(0), None
        want = p.copy()
        for _ in range(3):
            g = rng.standard_normal(9)
            v = 0.9 * v + g
            want = want * (1 - 0.1 * 0.1) - 0.1 * v
            opt.step([(p, g)])
        np.testing.assert_allclose(p, want, rtol=1e-12)
        return
    p, ref, _ = torch_steps(ours(), make_ref)
    np.testing.assert_allclose(p, ref, rtol=1e-9, atol=1e-11)


def test_rmsprop_epsilon_is_inside_the_root_as_in_keras():
    """Keras: g / sqrt(v + eps); torch: g / (sqrt(v) + eps). With eps large against v they differ:
    dpnn's RMSprop is Keras's."""
    opt = RMSprop(lr=1.0, rho=0.0, epsilon=1.0)
    var = step(opt, [0.0], [1.0])
    assert var[0] == pytest.approx(-1 / math.sqrt(2))          # torch: -1 / (1 + 1) = -0.5


# -- learning_rate set by a callback or a user changes the next step, on every engine --------
class HalveEachEpoch(Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch:
            self.model.optimizer.learning_rate = self.model.optimizer.learning_rate / 2


def _fit(optimizer, workers, callbacks, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.random((96, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 96)
    m = cnn(hidden=300)
    m.compile(optimizer=optimizer, lr=0.01)
    m.fit(x, y, batch_size=32, epochs=3, verbose=0, workers=workers, deterministic=True, shuffle=False,
          callbacks=callbacks, **({"shard_optimizer": True} if workers else {}))
    return m


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_learning_rate_set_by_a_callback_is_used_on_every_engine(optimizer):
    one = _fit(optimizer, None, [HalveEachEpoch()])
    two = _fit(optimizer, 2, [HalveEachEpoch()])
    plain = _fit(optimizer, None, [])
    assert one.optimizer.learning_rate == two.optimizer.learning_rate == 0.0025
    assert np.array_equal(one.params, two.params)               # the workers stepped with the new rate
    assert not np.array_equal(one.params, plain.params)         # and the rate did change the steps


# -- checkpoints: every optimizer's state resumes bitwise ---------------------------------------
@pytest.mark.parametrize("make", [lambda: RMSprop(momentum=0.9, centered=True), lambda: AdamW(amsgrad=True),
                                  lambda: SGD(momentum=0.9, nesterov=True), lambda: keras.optimizers.Adam()])
def test_state_dict_resumes_bitwise(make):
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(50).astype(np.float32) for _ in range(6)]
    p = rng.standard_normal(50).astype(np.float32)
    whole, a = make(), p.copy()
    for g in grads:
        whole.step([(a, g.copy())])
    first, b = make(), p.copy()
    for g in grads[:3]:
        first.step([(b, g.copy())])
    resumed = make()
    resumed.load_state_dict({k: np.array(v) for k, v in first.state_dict().items()})
    assert set(first.state_dict()) == {"t", "lr"} | {f"0/{k}" for k in first.slot_names()}
    for g in grads[3:]:
        resumed.step([(b, g.copy())])
    assert np.array_equal(a, b)


def test_a_users_rmsprop_subclass_is_stepped_whole():
    class Mine(RMSprop):            # defined here, as a user would: it may do anything in step
        pass
    assert Mine().sharded_slots() is None and RMSprop(momentum=0.5).sharded_slots() == ("v", "mom")
