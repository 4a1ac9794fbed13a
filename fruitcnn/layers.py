"""Custom Keras layers of fruitcnn.

:class:`BatchNorm` is batch normalisation written out from ``tf.reduce_mean`` and
arithmetic only (``squared_difference``, ``sqrt``, multiply, add), so that students
can read (and examiners can check) every step:

* training: per-channel mean and (biased) variance of the batch over all axes but the
  last, ``y = gamma * (x - mean) / sqrt(variance + epsilon) + beta``, and the moving
  statistics move towards the batch ones:
  ``moving = momentum * moving + (1 - momentum) * batch``;
* inference: the same formula with the moving statistics (or, with
  ``batch_stats_at_inference=True``, the statistics of the batch being evaluated, as
  some courses allow for the test check);
* several replicas (``tf.distribute``: GPUs, workers): with ``synchronized=True`` (the
  default) the batch statistics are those of the *global* batch, as one process would
  compute them: each replica's ``reduce_mean`` times its pixel count is summed over the
  replicas (``all_reduce``), then the squared differences from that global mean are
  summed the same way. Two all-reduces of one value per channel each, and the moving
  statistics stay equal on every replica.

It matches ``keras.layers.BatchNormalization`` (outputs, input gradients and moving
statistics) to float32 rounding; the tests hold it to that.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="fruitcnn")
class BatchNorm(keras.layers.Layer):
    """Batch normalisation over the last axis, built from ``tf.reduce_mean``.

    Args:
        momentum: weight of the old moving statistics in each update, in [0, 1).
            The statistics forget with a time constant of ``1 / (1 - momentum)``
            steps: 0.9 follows the last ~10 batches, Keras's 0.99 the last ~100
            (too slow for runs of a few hundred steps).
        epsilon: added to the variance before the square root, > 0.
        batch_stats_at_inference: use the statistics of the evaluated batch also
            when ``training`` is false (the moving statistics are then still
            tracked during training but not used).
        synchronized: under a ``tf.distribute`` strategy with several replicas, use
            the statistics of the global batch (summed over the replicas) instead of
            each replica's own; without one, or with one replica, nothing changes.
        **kwargs: passed to ``keras.layers.Layer`` (``name``, ``dtype`` ...).
    """

    def __init__(
        self,
        momentum: float = 0.9,
        epsilon: float = 1e-3,
        batch_stats_at_inference: bool = False,
        synchronized: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(
                f"BatchNorm momentum must be in [0, 1), got {momentum!r}; "
                "0.9 updates the moving statistics over about the last 10 batches."
            )
        if not float(epsilon) > 0.0:
            raise ValueError(f"BatchNorm epsilon must be > 0, got {epsilon!r}; e.g. 1e-3.")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.batch_stats_at_inference = bool(batch_stats_at_inference)
        self.synchronized = bool(synchronized)
        self.supports_masking = True

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"BatchNorm {self.name!r} needs a known channel count (last axis), got "
                f"input shape {tuple(input_shape)}."
            )
        shape = (int(channels),)
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(
            shape=shape, initializer="zeros", name="moving_mean", trainable=False
        )
        self.moving_variance = self.add_weight(
            shape=shape, initializer="ones", name="moving_variance", trainable=False
        )

    def call(self, inputs, training=None):
        x = tf.cast(inputs, self.moving_mean.dtype)
        # A frozen layer (trainable=False) behaves as in inference, as Keras's does.
        use_batch = (bool(training) and self.trainable) or self.batch_stats_at_inference
        if use_batch:
            mean, variance = self._moments(x)
            if training and self.trainable:
                self._update_moving(mean, variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        # y = (x - mean) * gamma / sqrt(var + eps) + beta, folded into one multiply-add
        # per element.
        scale = self.gamma / tf.sqrt(variance + self.epsilon)
        offset = self.beta - mean * scale
        return tf.cast(x * scale + offset, inputs.dtype)

    def _moments(self, x):
        """Per-channel mean and biased variance of the batch (of the global batch
        when synchronised over several replicas)."""
        axes = list(range(len(x.shape) - 1))
        replicas = tf.distribute.get_replica_context()
        if not self.synchronized or replicas is None or replicas.num_replicas_in_sync == 1:
            mean = tf.reduce_mean(x, axis=axes)
            # (x - mean)^2 in one elementwise pass (and one saved tensor for backprop).
            return mean, tf.reduce_mean(tf.math.squared_difference(x, mean), axis=axes)
        # Each replica's mean weighted by its pixel count, summed over the replicas with
        # the count itself (replicas may hold batches of different sizes, never empty
        # ones: fruitcnn splits a batch into non-empty parts): the global mean; then the
        # global mean of the squared differences from it, the same way. all_reduce
        # passes the gradients back through the sums.
        count = tf.cast(tf.size(x) // tf.shape(x)[-1], x.dtype)
        summed = replicas.all_reduce("sum", tf.concat([tf.reduce_mean(x, axis=axes) * count, [count]], 0))
        total = summed[-1]
        mean = summed[:-1] / total
        squares = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=axes) * count
        return mean, replicas.all_reduce("sum", squares) / total

    def _update_moving(self, mean, variance):
        keep = self.momentum
        self.moving_mean.assign(self.moving_mean * keep + mean * (1.0 - keep))
        self.moving_variance.assign(self.moving_variance * keep + variance * (1.0 - keep))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            momentum=self.momentum,
            epsilon=self.epsilon,
            batch_stats_at_inference=self.batch_stats_at_inference,
            synchronized=self.synchronized,
        )
        return config


def is_batch_norm(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` is a batch normalisation: fruitcnn's :class:`BatchNorm` or
    ``keras.layers.BatchNormalization``, the two that ``build_model`` makes.

    Both carry ``moving_mean`` and ``moving_variance`` and, in inference mode, compute
    ``x * scale + offset`` per channel from them. Exact types only: a subclass may
    compute something else, and code that relies on that formula (incremental occlusion
    folds the layer into the conv before it) must not take it for a batch norm.

    Args:
        layer: any Keras layer.

    Returns:
        True for those two layer types, False for every other layer.
    """
    return type(layer) in (BatchNorm, keras.layers.BatchNormalization)


@keras.saving.register_keras_serializable(package="fruitcnn")
class HorizontalFlip(keras.layers.Layer):
    """Mirrors NHWC images left-right (for test-time flip averaging)."""

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=2)


@keras.saving.register_keras_serializable(package="fruitcnn")
class Whiten(keras.layers.Conv2D):
    """A conv layer whose kernel is fixed (not trained; set from the training data, see
    ``fruitcnn.model.whitening_filters``) and whose bias is trained: airbench's first
    layer. The kernel stays frozen after saving and loading."""

    def build(self, input_shape):
        super().build(input_shape)
        self.kernel.trainable = False
