"""BatchNorm against the oracle keras.layers.BatchNormalization, in both modes; is_batch_norm."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fruitcnn.layers import BatchNorm, is_batch_norm

TOLERANCE = 1e-5


def _pair(momentum=0.9, epsilon=1e-3, channels=5, seed=0):
    """Our layer and Keras's, built with the same random (non-trivial) weights."""
    ours = BatchNorm(momentum=momentum, epsilon=epsilon)
    oracle = keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon)
    shape = (None, 6, 7, channels)
    ours.build(shape)
    oracle.build(shape)
    rng = np.random.default_rng(seed)
    weights = [
        rng.uniform(0.5, 2.0, channels),  # gamma
        rng.normal(0.0, 1.0, channels),  # beta
        rng.normal(0.0, 1.0, channels),  # moving mean
        rng.uniform(0.5, 3.0, channels),  # moving variance
    ]
    weights = [w.astype("float32") for w in weights]
    ours.set_weights(weights)
    oracle.set_weights(weights)
    return ours, oracle


def _inputs(seed=1, shape=(8, 6, 7, 5)):
    rng = np.random.default_rng(seed)
    # Channels with different means and scales, so per-channel statistics matter.
    scale = np.linspace(0.5, 4.0, shape[-1])
    offset = np.linspace(-3.0, 5.0, shape[-1])
    return tf.constant((rng.normal(size=shape) * scale + offset).astype("float32"))


def _forward_and_gradient(layer, x, training):
    upstream = tf.constant(np.random.default_rng(9).normal(size=x.shape).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        objective = tf.reduce_sum(y * upstream)
    grad_x, grad_gamma, grad_beta = tape.gradient(
        objective, [x, layer.trainable_weights[0], layer.trainable_weights[1]]
    )
    return y.numpy(), grad_x.numpy(), grad_gamma.numpy(), grad_beta.numpy()


@pytest.mark.parametrize("training", [True, False])
def test_outputs_and_gradients_match_keras(training):
    ours, oracle = _pair()
    x = _inputs()
    got = _forward_and_gradient(ours, x, training)
    want = _forward_and_gradient(oracle, x, training)
    for name, a, b in zip(("output", "d/dx", "d/dgamma", "d/dbeta"), got, want):
        np.testing.assert_allclose(a, b, atol=TOLERANCE, rtol=TOLERANCE, err_msg=name)


def test_training_normalises_each_channel():
    ours, _ = _pair()
    ours.set_weights(
        [np.ones(5, "float32"), np.zeros(5, "float32"), np.zeros(5, "float32"), np.ones(5, "float32")]
    )
    y = ours(_inputs(), training=True).numpy()
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    # Variance (x - m)^2 / (var + eps) is slightly below 1 because of epsilon.
    raw = _inputs().numpy().var(axis=(0, 1, 2))
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), raw / (raw + 1e-3), rtol=1e-4)


def test_moving_statistics_follow_keras_over_several_steps():
    ours, oracle = _pair(momentum=0.7)
    for step in range(4):
        x = _inputs(seed=step)
        ours(x, training=True)
        oracle(x, training=True)
    np.testing.assert_allclose(ours.moving_mean.numpy(), oracle.moving_mean.numpy(), atol=TOLERANCE)
    np.testing.assert_allclose(ours.moving_variance.numpy(), oracle.moving_variance.numpy(), atol=TOLERANCE)


def test_moving_statistics_update_rule_by_hand():
    ours, _ = _pair(momentum=0.8)
    before_mean = ours.moving_mean.numpy().copy()
    before_var = ours.moving_variance.numpy().copy()
    x = _inputs()
    ours(x, training=True)
    batch = x.numpy()
    expected_mean = 0.8 * before_mean + 0.2 * batch.mean(axis=(0, 1, 2))
    expected_var = 0.8 * before_var + 0.2 * batch.var(axis=(0, 1, 2))  # biased, as Keras
    np.testing.assert_allclose(ours.moving_mean.numpy(), expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.moving_variance.numpy(), expected_var, rtol=1e-5, atol=1e-6)


def test_inference_uses_moving_statistics_and_leaves_them_alone():
    ours, _ = _pair()
    gamma, beta, mean, variance = ours.get_weights()
    x = _inputs()
    y = ours(x, training=False).numpy()
    expected = gamma * (x.numpy() - mean) / np.sqrt(variance + 1e-3) + beta
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ours.moving_mean.numpy(), mean)
    np.testing.assert_array_equal(ours.moving_variance.numpy(), variance)


def test_batch_stats_at_inference_flag():
    ours, oracle = _pair()
    flagged = BatchNorm(batch_stats_at_inference=True)
    flagged.build((None, 6, 7, 5))
    flagged.set_weights(ours.get_weights())
    x = _inputs()
    before = flagged.moving_mean.numpy().copy()
    # Inference with the flag equals Keras in training mode (batch statistics) ...
    np.testing.assert_allclose(
        flagged(x, training=False).numpy(), oracle(x, training=True).numpy(), atol=TOLERANCE
    )
    # ... without touching the moving statistics.
    np.testing.assert_array_equal(flagged.moving_mean.numpy(), before)


def test_frozen_layer_runs_in_inference_mode():
    ours, oracle = _pair()
    ours.trainable = False
    oracle.trainable = False
    x = _inputs()
    np.testing.assert_allclose(
        ours(x, training=True).numpy(), oracle(x, training=True).numpy(), atol=TOLERANCE
    )


def test_dense_inputs_normalise_the_feature_axis():
    ours = BatchNorm()
    oracle = keras.layers.BatchNormalization(momentum=0.9)
    x = tf.constant(np.random.default_rng(0).normal(3.0, 2.0, (16, 4)).astype("float32"))
    np.testing.assert_allclose(
        ours(x, training=True).numpy(), oracle(x, training=True).numpy(), atol=TOLERANCE
    )


def test_config_round_trip_and_keras_file(tmp_path):
    layer = BatchNorm(momentum=0.75, epsilon=1e-4, batch_stats_at_inference=True, name="bn7")
    clone = BatchNorm.from_config(layer.get_config())
    assert (clone.momentum, clone.epsilon, clone.batch_stats_at_inference, clone.name) == (
        0.75,
        1e-4,
        True,
        "bn7",
    )
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, BatchNorm(name="bn1")(inputs))
    model.get_layer("bn1").set_weights(
        [
            np.full(3, 2.0, "float32"),
            np.ones(3, "float32"),
            np.full(3, 0.5, "float32"),
            np.full(3, 4.0, "float32"),
        ]
    )
    path = tmp_path / "bn.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: the layer is registered
    x = _inputs(shape=(2, 4, 4, 3)).numpy()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert isinstance(loaded.get_layer("bn1"), BatchNorm)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"momentum": 1.0}, "momentum must be in"),
        ({"momentum": -0.1}, "momentum must be in"),
        ({"epsilon": 0.0}, "epsilon must be > 0"),
    ],
)
def test_bad_arguments_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchNorm(**kwargs)


def test_only_reduce_mean_and_arithmetic():
    """The layer's graph uses no moments or fused batch-norm kernels."""
    layer = BatchNorm()
    layer.build((None, 3, 3, 2))
    graph = (
        tf.function(lambda x: layer(x, training=True))
        .get_concrete_function(tf.TensorSpec((2, 3, 3, 2), tf.float32))
        .graph
    )
    op_types = {op.type for op in graph.get_operations()}
    assert "Mean" in op_types
    assert not op_types & {"FusedBatchNorm", "FusedBatchNormV3", "BatchNormWithGlobalNormalization"}


class _ScaledBatchNorm(keras.layers.BatchNormalization):
    """A subclass that computes something else: not a batch norm to fold into a conv."""

    def call(self, inputs, training=None):
        return 2.0 * super().call(inputs, training=training)


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (BatchNorm(), True),
        (keras.layers.BatchNormalization(), True),
        (keras.layers.Conv2D(4, 3), False),
        (keras.layers.Dense(4), False),
        (keras.layers.LayerNormalization(), False),
        (_ScaledBatchNorm(), False),
    ],
    ids=["fruitcnn", "keras", "conv", "dense", "layer-norm", "subclass"],
)
def test_is_batch_norm_knows_both_batch_norms_and_nothing_else(layer, expected):
    assert is_batch_norm(layer) is expected
