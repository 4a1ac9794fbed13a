"""The one place that declares a run: data, architecture and training settings.

A run is described by a :class:`RunConfig` (four dataclasses: :class:`DataConfig`,
:class:`ArchConfig`, :class:`TrainConfig`, :class:`AugmentConfig`, plus the head choice). It is saved as
``config.json`` in every run folder and is all that later commands need to rebuild,
reload or resume the run.

Its parts, each importable from here:

- :mod:`~fruitcnn.config.language`: the layer language (:class:`LayerSpec`,
  :func:`parse_layers`, blocks, repeats, head layers), e.g.
  ``conv(32, 7, padding=valid) relu bn maxpool(2) flatten fc(1024) relu``.
- :mod:`~fruitcnn.config.arch`: :class:`ArchConfig`, the named ``PRESETS`` and
  :func:`resolve_arch` (what ``--arch`` accepts).
- :mod:`~fruitcnn.config.data`: :class:`DataConfig`, the split and unpack-limit syntax,
  the input pixel ranges.
- :mod:`~fruitcnn.config.run`: :class:`AugmentConfig`, :class:`TrainConfig`,
  :func:`parse_duration` and :class:`RunConfig` (``config.json``).
- :mod:`~fruitcnn.config.settings`: settings by name, as train.py's flags and study
  files give them (``SETTING_FIELDS``, :func:`config_from_settings`).
- :mod:`~fruitcnn.config.fields`: what the dataclasses share: each field's flag and
  help in its metadata (:func:`setting_field`), type checks.
"""

from fruitcnn.config.arch import (
    BN_LAYERS,
    DEFAULT_PRESETS,
    INITS,
    PRESETS,
    SMALL_IMAGE_SIDE,
    ArchConfig,
    arch_from_dict,
    default_preset,
    kernel_initializer,
    preset,
    resolve_arch,
)
from fruitcnn.config.data import (
    DEFAULT_UNPACK_LIMITS,
    INPUT_RANGE_CHOICES,
    INPUT_RANGES,
    TRAINING_PART,
    DataConfig,
    UnpackLimits,
    parse_split,
    parse_unpack_limits,
)
from fruitcnn.config.fields import setting_field
from fruitcnn.config.language import (
    ACTIVATIONS,
    BLOCKS,
    HEAD_LAYER_KINDS,
    LAYER_KINDS,
    MAX_LAYERS,
    LayerSpec,
    block_parameters,
    layers_to_text,
    parse_head_layers,
    parse_layers,
)
from fruitcnn.config.run import (
    CONFIG_VERSION,
    FLIPS,
    HEADS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    STRATEGIES,
    TTAS,
    AugmentConfig,
    RunConfig,
    TrainConfig,
    parse_duration,
)
from fruitcnn.config.settings import (
    SECTIONS,
    SETTING_EXTRAS,
    SETTING_FIELDS,
    config_from_settings,
    setting_hint,
    switch_flags,
)

__all__ = [
    "ACTIVATIONS",
    "BLOCKS",
    "BN_LAYERS",
    "CONFIG_VERSION",
    "DEFAULT_PRESETS",
    "DEFAULT_UNPACK_LIMITS",
    "FLIPS",
    "PRECISIONS",
    "STRATEGIES",
    "HEADS",
    "HEAD_LAYER_KINDS",
    "INITS",
    "INPUT_RANGES",
    "INPUT_RANGE_CHOICES",
    "LAYER_KINDS",
    "MAX_LAYERS",
    "OPTIMIZERS",
    "PRESETS",
    "SCHEDULES",
    "SECTIONS",
    "SETTING_EXTRAS",
    "SETTING_FIELDS",
    "SMALL_IMAGE_SIDE",
    "TRAINING_PART",
    "TTAS",
    "ArchConfig",
    "AugmentConfig",
    "DataConfig",
    "LayerSpec",
    "RunConfig",
    "TrainConfig",
    "UnpackLimits",
    "arch_from_dict",
    "block_parameters",
    "config_from_settings",
    "default_preset",
    "kernel_initializer",
    "layers_to_text",
    "parse_duration",
    "parse_head_layers",
    "parse_layers",
    "parse_split",
    "parse_unpack_limits",
    "preset",
    "resolve_arch",
    "setting_field",
    "setting_hint",
    "switch_flags",
]
