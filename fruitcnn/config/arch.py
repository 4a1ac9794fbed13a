"""The architecture section: :class:`ArchConfig`, the named presets and ``--arch``.

An architecture is a feature extractor (a list of :class:`~fruitcnn.config.language.LayerSpec`,
written in the layer language) plus settings shared by its layers. ``PRESETS`` names the
networks this project trains; :func:`resolve_arch` turns an ``--arch`` value (a preset, a
layer list or a ``.json`` file) into an :class:`ArchConfig`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from fruitcnn.config.fields import _check_field_types, _known_fields, setting_field
from fruitcnn.config.language import (
    _ALIASES,
    ACTIVATIONS,
    BLOCKS,
    LAYER_KINDS,
    MAX_LAYERS,
    LayerSpec,
    _layer_dict,
    _too_many_layers,
    parse_head_layers,
    parse_layers,
)

BN_LAYERS = ("fruitcnn", "keras")
INITS = ("auto", "glorot", "he")


@dataclass
class ArchConfig:
    """The network: feature extractor layers plus settings shared by its layers.

    Attributes:
        name: preset name, or ``custom``.
        layers: the feature extractor, input to feature vector (the heads follow).
        l2: L2 weight-decay factor on every conv and dense kernel (0 = off).
        dropout: rate of a dropout layer inserted before the heads (0 = none).
        bn_momentum: momentum of bn layers that do not set their own. 0.9 follows the
            last ~10 batches, right for runs of a few hundred steps; Keras's 0.99
            lags behind for ~100 steps and leaves inference accuracy far below
            training accuracy in short runs.
        bn_batch_stats_at_inference: bn uses the evaluated batch's statistics also
            at inference ("train mode for the test check"); off by default.
        bn_layer: ``fruitcnn`` (the reduce_mean layer) or ``keras``
            (keras.layers.BatchNormalization, for comparisons).
        normalize: standardise every channel with the training split's mean and
            variance (the ``normalize`` layer); False: only divide by 255 (a layer
            named ``scale``), to measure what normalisation brings.
        init: the conv and dense kernels' initialiser: ``glorot`` (Keras's default,
            uniform), ``he`` (He normal, for ReLU networks without batch norm) or
            ``auto`` (he for a network without batch norm whose activations are all
            ReLU, else glorot).
        head_layers: layers of each head between the shared features and its logits
            (:func:`parse_head_layers`): ``fc(64) relu`` for every head, or
            ``angle=fc(64) relu; colour=fc(8) relu`` per head ('' none).
    """

    name: str = "custom"
    layers: list[LayerSpec] = field(default_factory=list)
    l2: float = setting_field(
        0.0, "--l2", "L2 weight decay on conv and dense kernels", type=float, metavar="F"
    )
    dropout: float = setting_field(0.0, "--dropout", "dropout rate before the heads", type=float, metavar="F")
    bn_momentum: float = setting_field(
        0.9, "--bn-momentum", "momentum of the batch-norm moving statistics", type=float, metavar="F"
    )
    bn_batch_stats_at_inference: bool = setting_field(
        False,
        "--bn-test-batch-stats",
        "batch norm uses batch statistics at test time too",
        action="store_true",
    )
    bn_layer: str = setting_field("fruitcnn", "--bn-layer", "batch-norm implementation", choices=BN_LAYERS)
    normalize: bool = setting_field(
        True,
        "--no-normalize",
        "divide the pixels by 255 only, instead of standardising each channel with the training "
        "split's mean and variance (to measure what normalisation brings)",
        setting="normalize",
        action="store_false",
        shown_default=None,
    )
    init: str = setting_field(
        "auto",
        "--init",
        "conv and dense kernel initialiser (auto: he for ReLU networks without batch norm, else glorot)",
        choices=INITS,
    )
    head_layers: str = setting_field(
        "",
        "--head-layers",
        "layers of each head before its logits: 'fc(64) relu' for every head, or per head "
        "'angle=fc(64) relu; colour=fc(8) relu'",
        metavar="LAYERS",
    )

    def __post_init__(self):
        self.layers = [
            spec if isinstance(spec, LayerSpec) else LayerSpec(**_layer_dict(spec)) for spec in self.layers
        ]
        if not self.layers:
            raise ValueError("an architecture needs at least one layer.")
        _check_field_types(self)
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")
        if not 0.0 <= self.bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {self.bn_momentum!r}.")
        if self.bn_layer not in BN_LAYERS:
            raise ValueError(f"bn_layer must be one of {BN_LAYERS}, got {self.bn_layer!r}.")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}.")
        parse_head_layers(self.head_layers)
        if self.bn_batch_stats_at_inference and self.bn_layer != "fruitcnn":
            raise ValueError(
                "batch statistics at inference (--bn-test-batch-stats) need fruitcnn's bn layer; "
                f"got bn_layer={self.bn_layer!r}: drop --bn-layer keras or the flag."
            )


def kernel_initializer(arch: ArchConfig) -> str:
    """The Keras initialiser of the conv and dense kernels: ``arch.init``, with ``auto``
    resolved (He normal for ReLU networks without batch norm: their signal would shrink
    layer by layer from Glorot's smaller weights, so a deep one starts with outputs near
    zero and does not learn; else Keras's Glorot uniform)."""
    init = arch.init
    if init == "auto":
        kinds = {spec.kind for spec in arch.layers}
        functions = {spec.params["fn"] for spec in arch.layers if spec.kind == "act"}
        init = "he" if "bn" not in kinds and functions and functions <= {"relu"} else "glorot"
    return {"he": "he_normal", "glorot": "glorot_uniform"}[init]


# Presets: name -> (description, layer text, settings). Numbers live here and only here.
PRESETS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "line": (
        "fast default for the 28x28 line dataset: a 4x4 stride-2 stem keeps every "
        "pixel (the kernel overlaps) at a quarter of the cost of a full-resolution conv",
        "conv(16,4,stride=2) bn relu conv(32,3) bn relu maxpool(2) conv(64,3) bn relu gmp",
        {},
    ),
    "cs671-part1": (
        "CS671 Part 1: 7x7 conv, 32 filters, stride 1 -> ReLU -> BN -> 2x2 max-pool "
        "stride 2 -> FC 1024 -> ReLU -> output (valid padding, as tf.layers defaults)",
        "conv(32,7,padding=valid) relu bn maxpool(2,stride=2) flatten fc(1024) relu",
        {},
    ),
    "ece4179-shallow": (
        "ECE4179 shallow CNN for 96x96x3 (e.g. STL-10): conv 96 7x7 stride 2 no padding, ReLU; "
        "conv 64 5x5 stride 2, ReLU; conv 128 3x3 stride 2, ReLU; 3x3 max-pool stride 3; "
        "flatten (3x3x128 = 1152); fc 128, ReLU; then the output layer (fc 10 on STL-10)",
        "conv(96,7,stride=2,padding=valid) relu conv(64,5,stride=2,padding=valid) relu "
        "conv(128,3,stride=2,padding=valid) relu maxpool(3,stride=3) flatten fc(128) relu",
        {},
    ),
    "ece4179-deep": (
        "ECE4179 deep CNN for 96x96x3: four ece4179_block conv-blocks (each halves the side, "
        "96 -> 48 -> 24 -> 12 -> 6) with 32, 64, 128, 192 channels, global average pooling, "
        "then the output layer (fc 192 -> 10 on STL-10); add or remove a block in this one line",
        "ece4179_block(32) ece4179_block(64) ece4179_block(128) ece4179_block(192) gap",
        {},
    ),
    "ece4179-better": (
        "the better network the ECE4179 handout asks for, for 96x96x3: the photo recipe's "
        "network (fruitcnn.recipes, width 24): a frozen 2x2 whitening conv, max-pool to 32 px, "
        "three conv-pool-bn-relu-conv-bn-relu blocks of 24, 96, 96 filters, global max pooling, "
        "fc 96; 45 MFLOP per image against the deep CNN's 230",
        "whiten(2) relu maxpool(3) "
        "conv(24,bias=false) maxpool(2) bn(0.4) relu conv(24,bias=false) bn(0.4) relu "
        "conv(96,bias=false) maxpool(2) bn(0.4) relu conv(96,bias=false) bn(0.4) relu "
        "conv(96,bias=false) maxpool(2) bn(0.4) relu conv(96,bias=false) bn(0.4) relu "
        "gmp fc(96) relu scale(0.111)",
        {},
    ),
    "fruits": (
        "Fruits-360-sized photos (about 100x100): a 4x4 stride-4 stem, then three "
        "conv-bn-relu stages that double the width",
        "conv(24,4,stride=4) bn relu conv(48,3) bn relu maxpool(2) conv(96,3) bn relu maxpool(2) "
        "conv(192,3) bn relu gap",
        {},
    ),
    "mnist": (
        "28x28 greyscale digits: two 5x5 conv stages (pool before batch norm, so it "
        "normalises a quarter of the pixels) and a 128-unit layer; 99.44% on MNIST in 2 "
        "epochs (bench/run.py mnist)",
        "conv(32,5,padding=valid) maxpool(2) bn relu conv(48,5,padding=valid) maxpool(2) bn relu "
        "flatten fc(128) bn relu",
        {},
    ),
    "cifar10": (
        "32x32 colour photos: four conv stages that double the width (24 to 192), each "
        "pooled before batch norm, global max pooling",
        "conv(24,3) maxpool(2) bn relu conv(48,3) maxpool(2) bn relu conv(96,3) maxpool(2) bn relu "
        "conv(192,3) bn relu gmp",
        {"l2": 5e-5},
    ),
}

# The preset used when --arch is not given (see default_preset).
DEFAULT_PRESETS = {"line": "line", "small-grey": "mnist", "small-colour": "cifar10", "larger": "fruits"}
# Images up to this side count as small (MNIST, CIFAR); larger ones get the fruits preset.
SMALL_IMAGE_SIDE = 48


def default_preset(dataset: str, image_shape: tuple[int, int, int] | None = None) -> str:
    """The preset for data without --arch: ``line`` for the line dataset, else by
    image size and colour (see ``DEFAULT_PRESETS``). train.py and study trials give
    colour photos the photo recipe's network instead (``fruitcnn.recipes``); this is
    the choice for everything else and where no data is at hand."""
    if dataset == "line" or image_shape is None:
        return DEFAULT_PRESETS["line"]
    height, width, channels = image_shape
    if max(height, width) <= SMALL_IMAGE_SIDE:
        return DEFAULT_PRESETS["small-grey" if channels == 1 else "small-colour"]
    return DEFAULT_PRESETS["larger"]


def preset(name: str) -> ArchConfig:
    """The :class:`ArchConfig` of a named preset (see ``PRESETS``)."""
    if name not in PRESETS:
        raise ValueError(
            f"unknown architecture preset {name!r}; presets: {', '.join(PRESETS)}. "
            "Or pass a layer list such as 'conv(32) relu maxpool(2) gap'."
        )
    _, text, settings = PRESETS[name]
    return ArchConfig(name=name, layers=parse_layers(text), **settings)


def resolve_arch(value: str, blocks: dict[str, str] | None = None) -> ArchConfig:
    """Turn a ``--arch`` value into an :class:`ArchConfig`.

    Args:
        value: a preset name, a path to a ``.json`` file (an ArchConfig dict, which
            may define ``blocks``, or a list of layer dicts), or a compact layer list.
        blocks: blocks the layer list may call besides the built-in ``BLOCKS``.
    """
    if value in PRESETS:
        return preset(value)
    if value.endswith(".json"):
        if not os.path.isfile(value):
            raise ValueError(f"architecture file {value!r} does not exist.")
        with open(value, encoding="utf-8") as handle:
            try:
                loaded = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"architecture file {value!r} is not valid JSON: {error}.") from error
        if isinstance(loaded, list):
            loaded = {"layers": loaded}
        if not isinstance(loaded, dict):
            raise ValueError(
                f'architecture file {value!r} must hold an object such as {{"layers": "conv(32) gap"}} '
                f"or a list of layers, not {type(loaded).__name__}."
            )
        return arch_from_dict(loaded)
    single_layer = set(LAYER_KINDS) | set(ACTIVATIONS) | set(_ALIASES) | set(BLOCKS) | set(blocks or {})
    bare_word = not any(character in value for character in "( *[")
    if bare_word and value.lower() not in single_layer:
        # A single bare word that is no preset is most likely a mistyped preset name.
        return preset(value)
    return ArchConfig(name="custom", layers=parse_layers(value, blocks))


def arch_from_dict(data: dict[str, Any]) -> ArchConfig:
    """An :class:`ArchConfig` from its JSON form (layers as dicts or compact text,
    optionally ``blocks`` that the text calls)."""
    data = dict(data)
    layers = data.pop("layers", [])
    blocks = data.pop("blocks", None)
    if blocks is not None and not isinstance(blocks, dict):
        raise ValueError(f"'blocks' must map block names to layer text, got {blocks!r}.")
    if isinstance(layers, str):
        layers = parse_layers(layers, blocks)
    elif not isinstance(layers, list):
        raise ValueError(f"'layers' must be a layer list as text or a list of layer dicts, got {layers!r}.")
    elif len(layers) > MAX_LAYERS:
        raise ValueError(_too_many_layers(f"a list of {len(layers)} layers"))
    return ArchConfig(layers=layers, **_known_fields(ArchConfig, data, "architecture"))
