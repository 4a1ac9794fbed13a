"""The one place that declares a run: data, architecture and training settings.

A run is described by a :class:`RunConfig` (four dataclasses: :class:`DataConfig`,
:class:`ArchConfig`, :class:`TrainConfig`, :class:`AugmentConfig`, plus the head choice). It is saved as
``config.json`` in every run folder and is all that later commands need to rebuild,
reload or resume the run.

The feature extractor is a list of :class:`LayerSpec`. It can be written compactly,
which is how presets are declared and how users pass their own on the command line::

    conv(32, 7, padding=valid) relu bn maxpool(2) flatten fc(1024) relu

Layer kinds and their arguments (positional in this order, or ``name=value``):

========  =========================================================================
conv      filters, kernel=3, stride=1, padding=same (``same``, ``valid`` or a number
          of zero pixels on every side), bias=auto (off when bn follows directly)
bn        momentum (default: the architecture's ``bn_momentum``), epsilon=1e-3
relu ...  an activation: relu, elu, gelu, tanh, sigmoid, leaky_relu, swish
          (or ``act(name)``)
maxpool   size=2, stride (default: size), padding=valid
avgpool   size=2, stride (default: size), padding=valid
dropout   rate
flatten   (no arguments)
gap       global average pooling (no arguments)
gmp       global max pooling (no arguments)
fc        units (a fully connected layer; ``dense`` is the same)
whiten    kernel=2: the first layer only; a frozen kernel x kernel conv whose 2*C*k*k
          filters whiten the training images' patches (the eigenvectors of their
          covariance over the square roots of its eigenvalues, and their negatives),
          with a trained bias (airbench's first layer)
scale     factor: multiply by a constant (e.g. ``gmp scale(0.111)`` before the heads:
          smaller logits, as airbench's 1/9, which keeps high learning rates stable)
========  =========================================================================

Separate layers by spaces, commas or semicolons. A ``.json`` file holding
``{"layers": [{"kind": "conv", "filters": 32}, ...]}`` or a list of such dicts works
too (see :func:`resolve_arch`).

Blocks and repetition make "add a block" or "one more conv layer" one edit:

- ``N*layer`` and ``N*[layers ...]`` repeat a layer or a group N times (0: leave it
  out): ``3*[conv(32) relu maxpool(2)] gap``.
- A *block* is a named, reusable unit with ``{placeholders}``, called like a layer
  with its arguments in the order the placeholders first appear (or by name).
  ``BLOCKS`` holds the built-in ones, e.g. ``ece4179_block``::

      ece4179_block(32) ece4179_block(64) ece4179_block(128) ece4179_block(192) gap

  expands each call into ``conv(F,3,stride=2,padding=1) relu conv(F,1) relu
  conv(F,3) relu``. Architecture files and study files may define their own
  (``{"blocks": {"stage": "conv({filters}) bn relu maxpool(2)"}, "layers":
  "stage(32) stage(64) gap"}``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

CONFIG_VERSION = 1

_REQUIRED = object()
# Parameters of each layer kind, in positional order, with their defaults.
LAYER_KINDS: dict[str, dict[str, Any]] = {
    "conv": {"filters": _REQUIRED, "kernel": 3, "stride": 1, "padding": "same", "bias": "auto"},
    "bn": {"momentum": None, "epsilon": 1e-3},
    "act": {"fn": _REQUIRED},
    "maxpool": {"size": 2, "stride": None, "padding": "valid"},
    "avgpool": {"size": 2, "stride": None, "padding": "valid"},
    "dropout": {"rate": _REQUIRED},
    "flatten": {},
    "gap": {},
    "gmp": {},
    "fc": {"units": _REQUIRED},
    "whiten": {"kernel": 2},
    "scale": {"factor": _REQUIRED},
}
ACTIVATIONS = ("relu", "elu", "gelu", "tanh", "sigmoid", "leaky_relu", "swish")
_ALIASES = {"dense": "fc", "batchnorm": "bn", "conv2d": "conv"}
OPTIMIZERS = ("sgd", "adam", "rmsprop")
SCHEDULES = ("constant", "step", "cosine", "linear", "plateau")
HEADS = ("single", "multi")
TTAS = ("none", "flip")
BN_LAYERS = ("fruitcnn", "keras")
INITS = ("auto", "glorot", "he")


@dataclass
class LayerSpec:
    """One layer of the feature extractor: its kind and its arguments."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        kind = _ALIASES.get(self.kind, self.kind)
        params = dict(self.params)
        if kind in ACTIVATIONS:
            kind, params = "act", {"fn": kind, **params}
        if kind not in LAYER_KINDS:
            known = ", ".join(sorted(set(LAYER_KINDS) | set(ACTIVATIONS)))
            raise ValueError(f"unknown layer kind {self.kind!r}; known kinds: {known}.")
        allowed = LAYER_KINDS[kind]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(
                f"layer {kind!r} has no argument {', '.join(unknown)}; its arguments are "
                f"{', '.join(allowed) or '(none)'}."
            )
        for name, default in allowed.items():
            if name not in params:
                if default is _REQUIRED:
                    raise ValueError(f"layer {kind!r} needs its argument {name!r}, e.g. {_example(kind)}.")
                params[name] = default
        self.kind, self.params = kind, params
        _check_values(kind, params)

    def to_text(self) -> str:
        """The compact form of this layer, e.g. ``conv(32,7,padding=valid)``."""
        if self.kind == "act":
            return str(self.params["fn"])
        defaults = LAYER_KINDS[self.kind]
        parts = [
            f"{name}={value}"
            for name, value in self.params.items()
            if defaults[name] is _REQUIRED or value != defaults[name]
        ]
        return f"{self.kind}({','.join(parts)})" if parts else self.kind


def _example(kind: str) -> str:
    return {
        "conv": "conv(32) or conv(32, 3, stride=1)",
        "act": "act(relu)",
        "dropout": "dropout(0.5)",
        "fc": "fc(128)",
    }.get(kind, kind)


def _check_values(kind: str, params: dict[str, Any]) -> None:
    def positive_int(name):
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{kind} {name} must be a positive integer, got {value!r}.")

    if kind == "conv":
        positive_int("filters")
        positive_int("kernel")
        positive_int("stride")
        padding = params["padding"]
        is_pixels = isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0
        if not (padding in ("same", "valid") or is_pixels):
            raise ValueError(
                f"conv padding must be 'same', 'valid' or a number of pixels >= 0, got {padding!r}."
            )
        if params["bias"] not in ("auto", True, False):
            raise ValueError(f"conv bias must be auto, true or false, got {params['bias']!r}.")
    elif kind in ("maxpool", "avgpool"):
        positive_int("size")
        if params["stride"] is not None:
            positive_int("stride")
        if params["padding"] not in ("same", "valid"):
            raise ValueError(f"{kind} padding must be 'same' or 'valid', got {params['padding']!r}.")
    elif kind == "fc":
        positive_int("units")
    elif kind == "whiten":
        positive_int("kernel")
    elif kind == "scale":
        if not (_is_number(params["factor"]) and 0 < params["factor"] < math.inf):
            raise ValueError(f"scale factor must be a positive number, got {params['factor']!r}.")
    elif kind == "dropout":
        if not _is_number(params["rate"]) or not 0.0 <= params["rate"] < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {params['rate']!r}.")
    elif kind == "act":
        if params["fn"] not in ACTIVATIONS:
            raise ValueError(f"unknown activation {params['fn']!r}; known: {', '.join(ACTIVATIONS)}.")
    elif kind == "bn":
        momentum, epsilon = params["momentum"], params["epsilon"]
        if momentum is not None and not (_is_number(momentum) and 0.0 <= momentum < 1.0):
            raise ValueError(f"bn momentum must be a number in [0, 1), got {momentum!r}.")
        if not (_is_number(epsilon) and 0 < epsilon < math.inf):
            raise ValueError(f"bn epsilon must be a number > 0, got {epsilon!r}.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_field_types(instance: Any) -> None:
    """Reject values of the wrong type (e.g. from a hand-edited JSON file) by name."""
    for item in dataclasses.fields(instance):
        value = getattr(instance, item.name)
        expected = item.type
        if expected == "float" and _is_number(value):
            if not math.isfinite(value):
                raise ValueError(
                    f"{_field_words(instance, item.name)} must be a finite number, got {value!r}; "
                    "NaN and infinity would make every step of training meaningless."
                )
            setattr(instance, item.name, float(value))
            continue
        ok = {
            "float": _is_number(value),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }.get(expected, True)
        if not ok:
            wanted = _TYPE_WORDS.get(expected, expected)
            hint = "; write it without quotes" if isinstance(value, str) else ""
            raise ValueError(
                f"{type(instance).__name__}.{item.name} must be {wanted}, got {value!r} "
                f"({type(value).__name__}){hint}."
            )


_TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}
_SECTIONS = {"DataConfig": "data", "ArchConfig": "arch", "TrainConfig": "train", "AugmentConfig": "augment"}


def _field_words(instance: Any, name: str) -> str:
    """``TrainConfig.learning_rate (--lr)``: the field and, when there is one, its flag."""
    section = _SECTIONS.get(type(instance).__name__)
    flags = [flag for flag, place in SETTING_FIELDS.items() if place == (section, name)]
    flag = f" (--{flags[0].replace('_', '-')})" if flags else ""
    return f"{type(instance).__name__}.{name}{flag}"


_TOKEN = re.compile(r"\s*(?:(\d+)\s*\*\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^()]*)\))?\s*[,;]?")
_GROUP = re.compile(r"(\d+)\s*\*\s*\[([^\[\]]*)\]")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Blocks may call blocks; this deep is surely a block that calls itself.
_MAX_BLOCK_DEPTH = 16
# Most layers a layer list may expand to: far beyond any network trained here (the
# deepest preset has 19), low enough that '1000*[1000*[relu]]' is refused at once
# instead of filling the memory.
MAX_LAYERS = 2000

# Built-in blocks: name -> (description, layer text with {placeholders}).
BLOCKS: dict[str, tuple[str, str]] = {
    "ece4179_block": (
        "ECE4179 deep-CNN block: 3x3 conv stride 2 padding 1 (halves the side), ReLU, 1x1 conv, "
        "ReLU, 3x3 conv padding 1 (written 'same': identical at stride 1), ReLU; all with bias",
        "conv({filters},3,stride=2,padding=1) relu conv({filters},1) relu conv({filters},3) relu",
    ),
}


def block_parameters(text: str) -> list[str]:
    """The ``{placeholders}`` of a block's layer text, in order of first appearance."""
    return list(dict.fromkeys(_PLACEHOLDER.findall(text)))


def parse_layers(text: str, blocks: dict[str, str] | None = None) -> list[LayerSpec]:
    """Parse the compact layer syntax (see the module docstring) into specs.

    Args:
        text: the layer list, e.g. ``"2*[conv(32) relu] maxpool(2) gap"``.
        blocks: blocks of this architecture (name -> layer text with
            ``{placeholders}``) besides the built-in ``BLOCKS``.

    Raises:
        ValueError: naming the part that could not be read.
    """
    known = {name: body for name, (_, body) in BLOCKS.items()}
    for name, body in (blocks or {}).items():
        _check_block(name, body)
        known[name] = body
    specs = _parse(text, known, depth=0)
    if not specs:
        raise ValueError("the layer list is empty; give at least one layer, e.g. 'conv(32) gap'.")
    return specs


def _check_block(name: str, body: Any) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
        raise ValueError(f"block name {name!r} must be a word of letters, digits and _, e.g. 'stage'.")
    kind = _ALIASES.get(str(name).lower(), str(name).lower())
    if kind in LAYER_KINDS or kind in ACTIVATIONS:
        raise ValueError(f"block name {name!r} is a layer kind; call the block something else.")
    if not isinstance(body, str) or not body.strip():
        raise ValueError(
            f"block {name!r} must be a layer list as text, e.g. 'conv({{filters}}) relu'; got {body!r}."
        )


def _parse(text: str, blocks: dict[str, str], depth: int) -> list[LayerSpec]:
    if depth > _MAX_BLOCK_DEPTH:
        raise ValueError(f"blocks nest deeper than {_MAX_BLOCK_DEPTH} levels; does a block call itself?")
    text = _expand_groups(text)
    stray = _PLACEHOLDER.search(text)
    if stray:
        raise ValueError(
            f"the layer list still holds the placeholder {stray.group(0)} at {text[stray.start() :][:30]!r}; "
            "placeholders belong in block definitions or study templates, which fill them in."
        )
    specs, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ValueError(
                f"cannot read the layer list at {text[position : position + 20]!r} "
                f"(character {position}); expected e.g. 'conv(32,3) relu maxpool(2)'."
            )
        repeat, kind, args = match.group(1), match.group(2), match.group(3)
        times = _count(repeat) if repeat is not None else 1  # 0*layer: none (checked all the same)
        if kind in blocks:
            one = _parse(_fill_block(kind, blocks[kind], args or ""), blocks, depth + 1)
        else:
            one = [LayerSpec(_canonical_kind(kind, blocks), _parse_args(kind, args or ""))]
        if len(specs) + times * len(one) > MAX_LAYERS:
            raise ValueError(_too_many_layers())
        for _ in range(times):
            specs.extend(LayerSpec(spec.kind, dict(spec.params)) for spec in one)
        position = match.end()
    return specs


def _count(text: str) -> int:
    """A repeat count of ``N*``, at most ``MAX_LAYERS``."""
    count = int(text)
    if count > MAX_LAYERS:
        raise ValueError(_too_many_layers(f"a repeat count of {text}"))
    return count


def _too_many_layers(what: str = "it") -> str:
    return (
        f"the layer list is too long: {what} expands to more than {MAX_LAYERS} layers; "
        "check the repeat counts (N*[...]) and blocks."
    )


def _expand_groups(text: str) -> str:
    """``N*[layers]`` written out N times, innermost groups first."""
    chained = re.search(r"\d+\s*\*\s*\d+\s*\*", text)
    if chained:
        raise ValueError(
            f"cannot read {chained.group(0)!r}: write one count per group and nest groups, e.g. "
            "'2*[3*[relu]]' for six."
        )
    while True:
        expanded = _GROUP.sub(lambda match: " ".join([match.group(2)] * _count(match.group(1))), text)
        if expanded == text:
            break
        text = expanded
        if len(text.split()) > MAX_LAYERS * 4:  # no layer needs more than a few words
            raise ValueError(_too_many_layers())
    if "[" in text or "]" in text:
        raise ValueError(
            f"cannot read the group in {text!r}: write a repeated group as N*[layers], e.g. "
            "'3*[conv(32) relu] gap', with matching brackets."
        )
    return text


def _fill_block(name: str, body: str, args_text: str) -> str:
    """A block's layer text with its placeholders replaced by the call's arguments."""
    names = block_parameters(body)
    values = _arguments(args_text, names, f"block {name!r}")
    unknown = sorted(set(values) - set(names))
    if unknown:
        listed = ", ".join(names) or "(none)"
        raise ValueError(f"block {name!r} has no parameter {unknown[0]!r}; its parameters are {listed}.")
    missing = [key for key in names if key not in values]
    if missing:
        raise ValueError(
            f"block {name!r} needs {', '.join(missing)}: call it as {name}({', '.join(names)}), "
            f"e.g. {name}({', '.join('32' for _ in names)})."
        )
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], body)


def _canonical_kind(kind: str, blocks: dict[str, str] | None = None) -> str:
    kind = _ALIASES.get(kind.lower(), kind.lower())
    if kind not in LAYER_KINDS and kind not in ACTIVATIONS:
        known = ", ".join(sorted(set(LAYER_KINDS) | set(ACTIVATIONS)))
        names = ", ".join(sorted(blocks if blocks is not None else (name for name in BLOCKS)))
        raise ValueError(f"unknown layer kind {kind!r}; known kinds: {known}; blocks: {names or '(none)'}.")
    return kind


def _parse_args(kind: str, text: str) -> dict[str, Any]:
    kind = _canonical_kind(kind)
    names = list(LAYER_KINDS.get(kind, {}))
    return {name: _parse_value(value) for name, value in _arguments(text, names, f"layer {kind!r}").items()}


def _arguments(text: str, names: list[str], owner: str) -> dict[str, str]:
    """``8, 3, stride=2`` as {name: text}: positional arguments take ``names`` in order."""
    values: dict[str, str] = {}
    positional = 0
    for raw in [part.strip() for part in text.split(",") if part.strip()]:
        if "=" in raw:
            name, value = (piece.strip() for piece in raw.split("=", 1))
        else:
            if positional >= len(names):
                raise ValueError(
                    f"{owner} takes at most {len(names)} positional argument(s) "
                    f"({', '.join(names) or 'none'}), got ({text})."
                )
            name, value = names[positional], raw
            positional += 1
        if name in values:
            raise ValueError(f"{owner}: argument {name!r} is given twice in ({text}).")
        values[name] = value
    return values


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def layers_to_text(layers: list[LayerSpec]) -> str:
    """The compact text of a layer list (inverse of :func:`parse_layers`)."""
    return " ".join(spec.to_text() for spec in layers)


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
    l2: float = 0.0
    dropout: float = 0.0
    bn_momentum: float = 0.9
    bn_batch_stats_at_inference: bool = False
    bn_layer: str = "fruitcnn"
    normalize: bool = True
    init: str = "auto"
    head_layers: str = ""

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


# Layer kinds a head may have (they work on the feature vector).
HEAD_LAYER_KINDS = ("fc", "act", "dropout", "bn")


def parse_head_layers(text: str, heads=None) -> dict[str, list[LayerSpec]]:
    """The head layers of ``text`` by head: ``fc(64) relu`` gives every head those
    layers (key ``*``), ``angle=fc(64) relu; colour=fc(8) relu`` chosen heads theirs.

    Args:
        text: the head layers ('' for none).
        heads: the model's head names, to resolve ``*`` and check the names (None:
            syntax only, ``*`` kept).

    Raises:
        ValueError: a layer a head cannot have, an unknown head, a head given twice.
    """
    found: dict[str, list[LayerSpec]] = {}
    if not str(text).strip():
        return found
    items = [item.strip() for item in str(text).split(";") if item.strip()]
    for item in items:
        head, _, layers = item.partition("=") if "=" in item.split("(")[0] else ("*", "", item)
        head = head.strip()
        if head in found:
            raise ValueError(f"head layers: head {head!r} is given twice in {text!r}.")
        specs = parse_layers(layers)
        wrong = [spec.to_text() for spec in specs if spec.kind not in HEAD_LAYER_KINDS]
        if wrong:
            raise ValueError(
                f"head layers {layers.strip()!r}: a head works on the feature vector, so it can have "
                f"{', '.join(HEAD_LAYER_KINDS)} layers, not {', '.join(wrong)}."
            )
        found[head] = specs
    if heads is None:
        return found
    unknown = [head for head in found if head != "*" and head not in heads]
    if unknown:
        raise ValueError(
            f"head layers for {', '.join(unknown)}, but this model's heads are {', '.join(heads)}."
        )
    shared = found.get("*", [])
    return {head: found.get(head, shared) for head in heads if found.get(head, shared)}


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


def _layer_dict(spec: Any) -> dict[str, Any]:
    if isinstance(spec, str):
        (parsed,) = parse_layers(spec)
        return {"kind": parsed.kind, "params": parsed.params}
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise ValueError(
            f"a layer must be a dict with a 'kind' (e.g. {{'kind': 'conv', 'filters': 32}}), got {spec!r}."
        )
    if not isinstance(spec.get("params", {}), dict):
        raise ValueError(f"a layer's 'params' must map argument names to values, got {spec['params']!r}.")
    params = dict(spec.get("params", {}))
    params.update({key: value for key, value in spec.items() if key not in ("kind", "params")})
    return {"kind": spec["kind"], "params": params}


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


# Pixel ranges a model made elsewhere may expect (--input-range of explain.py and
# report.py; fruitcnn.modelfile): scale and offset that map 0-255 pixels into them.
INPUT_RANGES = {"0-255": (1.0, 0.0), "0-1": (1.0 / 255.0, 0.0), "-1-1": (2.0 / 255.0, -1.0)}
INPUT_RANGE_CHOICES = ("auto", *INPUT_RANGES)

# Unpack limits (DataConfig.unpack_limits): no image set needs a single file above 1 GiB
# (STL-10's largest file that is read, test_X.bin, has 207 MB); 16 GiB of files is more
# than the 24 GiB machines this was written on can decode; real image data compresses
# 1-5x (JPEG/PNG 1.0, MNIST's IDX 4.8), a zip of zeros 1000x.
DEFAULT_UNPACK_LIMITS = "member=1GiB,total=16GiB,ratio=100"
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class UnpackLimits:
    """Limits on unpacked data: bytes per file, bytes in all, unpacked/packed ratio."""

    member: int
    total: int
    ratio: float


def parse_unpack_limits(text: str) -> UnpackLimits:
    """``member=1GiB,total=16GiB,ratio=100`` (any subset; the rest keep their defaults)
    as :class:`UnpackLimits`. Sizes take B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T (binary units).

    Raises:
        ValueError: an unknown key or an unreadable value, with an example.
    """
    values = _limit_values(DEFAULT_UNPACK_LIMITS) if text != DEFAULT_UNPACK_LIMITS else {}
    values.update(_limit_values(text))
    return UnpackLimits(int(values["member"]), int(values["total"]), float(values["ratio"]))


def _limit_values(text: str) -> dict[str, float]:
    example = f"e.g. --unpack-limits {DEFAULT_UNPACK_LIMITS} (or only ratio=500)"
    values: dict[str, float] = {}
    for part in [item.strip() for item in str(text).split(",") if item.strip()]:
        key, _, value = part.partition("=")
        key, value = key.strip().lower(), value.strip().lower()
        if key not in ("member", "total", "ratio") or not value:
            raise ValueError(
                f"unpack limit {part!r}: expected member=SIZE, total=SIZE or ratio=N; {example}."
            )
        pattern = r"([0-9]*\.?[0-9]+)" if key == "ratio" else r"([0-9]*\.?[0-9]+)\s*([kmgt]?)(?:i?b)?"
        match = re.fullmatch(pattern, value)
        if match is None:
            kind = "number" if key == "ratio" else "size"
            raise ValueError(f"unpack limit {part!r}: cannot read {value!r} as a {kind}; {example}.")
        number = float(match.group(1)) * (1 if key == "ratio" else _SIZE_UNITS[match.group(2)])
        if not math.isfinite(number) or number < 1:
            raise ValueError(f"unpack limit {part!r} must be a finite number, at least 1 (byte); {example}.")
        values[key] = number
    return values


# A split that starts with this re-splits only the source's own training part (CS671:
# "use 60% of the training data for training and 40% for testing": --split train:60/40).
TRAINING_PART = "train:"


def parse_split(text: str) -> tuple[str, tuple[float, ...]]:
    """Read a split such as ``60/40``, ``8000/2000/3000`` or ``train:60/40``.

    Returns:
        ``("fractions", (...))`` when the parts are percentages summing to 100, or
        ``("counts", (...))`` for image counts (a ``train:`` prefix, which says what
        is split, does not change them).

    Raises:
        ValueError: for anything else, with examples of what works.
    """
    text = str(text)
    body = text[len(TRAINING_PART) :] if text.startswith(TRAINING_PART) else text
    parts = [part.strip() for part in body.split("/")]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) not in (2, 3) or any(not 0 < value < math.inf for value in values):
        raise ValueError(
            f"cannot read split {text!r}; expected train/test or train/val/test, as "
            "percentages summing to 100 (e.g. 60/40 or 70/10/20) or as image counts "
            "(e.g. 8000/2000/3000), optionally of the training part only (train:60/40)."
        )
    if abs(sum(values) - 100.0) < 1e-6:
        return "fractions", tuple(value / 100.0 for value in values)
    if all(value.is_integer() for value in values):
        return "counts", values
    raise ValueError(
        f"split {text!r} is neither percentages summing to 100 (they sum to "
        f"{sum(values):g}) nor whole image counts."
    )


@dataclass
class DataConfig:
    """Which data, how it is read and how it is split.

    Attributes:
        dataset: ``line`` (the generated line dataset), a folder or archive path
            (image folders, MNIST, CIFAR, STL-10, mini-ImageNet; see
            ``fruitcnn.data.sources``), or ``tfds:NAME``.
        image_size: side of the square images in pixels; None: the data's own size
            (28 for the line dataset; for image folders of mixed sizes, the most
            common one).
        images_per_class: images generated per class (line dataset).
        split: ``auto`` (the dataset's own train/test split when it has one, else
            60/40), or ``train/test`` or ``train/val/test`` as percentages summing to
            100 (``60/40``) or image counts (``8000/2000/3000``). An explicit split on
            a dataset with its own split pools all its images and re-splits them.
        val_fraction: share of the training part kept for validation when the split
            (or the dataset's own split) has no validation part.
        seed: seed of data generation and splitting.
        data_dir: tensorflow-datasets data folder for ``tfds:`` names ('' = tfds's default).
        strict: treat skipped files (corrupt images, stray files) as errors.
        unpack_limits: how much data may be unpacked (see :func:`parse_unpack_limits`):
            ``member`` the largest single file read (also after gunzip), ``total`` all
            files read together, ``ratio`` the largest unpacked/packed size ratio of an
            archive or a compressed file (checked once 64 MiB are unpacked). A source
            beyond them is refused as a possible decompression bomb.
    """

    dataset: str = "line"
    image_size: int | None = None
    images_per_class: int = 1000
    split: str = "auto"
    val_fraction: float = 0.1
    seed: int = 0
    data_dir: str = ""
    strict: bool = False
    unpack_limits: str = DEFAULT_UNPACK_LIMITS

    def __post_init__(self):
        _check_field_types(self)
        parse_unpack_limits(self.unpack_limits)
        if self.split != "auto":
            parse_split(self.split)
        if self.image_size is not None and (
            not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 1
        ):
            raise ValueError(
                "image_size must be a whole number >= 1 (or None for the data's own size), "
                f"got {self.image_size!r}."
            )
        if self.images_per_class < 1:
            raise ValueError(f"images_per_class must be >= 1, got {self.images_per_class}.")
        if not self.dataset.strip():
            raise ValueError("dataset is empty; give 'line', a folder or archive path, or tfds:NAME.")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(
                f"val_fraction must be in (0, 1), got {self.val_fraction!r}: the best "
                "model is chosen on validation data, so some is needed (e.g. 0.1)."
            )


FLIPS = ("none", "horizontal", "vertical", "both")


@dataclass
class AugmentConfig:
    """Random changes to every training image, drawn independently per image and per
    epoch; evaluation (validation, test, explanations) always sees the images as they are.

    Attributes:
        flip: ``none``, ``horizontal`` (mirror left-right with probability 1/2),
            ``vertical`` or ``both``.
        translate: shift by up to this many pixels in x and y (a random crop of the
            image padded by reflection).
        rotate: rotate by up to this many degrees either way.
        color_jitter: scale brightness, contrast and saturation by random factors in
            [1 - j, 1 + j].
    """

    flip: str = "none"
    translate: int = 0
    rotate: float = 0.0
    color_jitter: float = 0.0

    def __post_init__(self):
        _check_field_types(self)
        if self.flip not in FLIPS:
            raise ValueError(f"flip must be one of {', '.join(FLIPS)}, got {self.flip!r}.")
        if self.translate < 0:
            raise ValueError(f"translate must be >= 0 pixels, got {self.translate!r}.")
        if not 0.0 <= self.rotate <= 180.0:
            raise ValueError(f"rotate must be in [0, 180] degrees, got {self.rotate!r}.")
        if not 0.0 <= self.color_jitter < 1.0:
            raise ValueError(f"color_jitter must be in [0, 1), got {self.color_jitter!r}; e.g. 0.2.")

    @property
    def active(self) -> bool:
        return self.flip != "none" or self.translate > 0 or self.rotate > 0 or self.color_jitter > 0


_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*$"
)


def parse_duration(text: str | float) -> float:
    """Seconds of ``300``, ``300s``, ``5m``, ``1h30m``, ``2.5m`` (``--time-budget``).

    Raises:
        ValueError: for anything else, or a duration that is not positive and finite.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text).lower())
        if not match or not any(match.groups()):
            raise ValueError(
                f"cannot read the time budget {text!r}; give seconds (300), minutes (5m) or hours and "
                "minutes (1h30m)."
            )
        hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
        seconds = 3600 * hours + 60 * minutes + seconds
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"the time budget must be a positive number of seconds, got {text!r}.")
    return seconds


@dataclass
class TrainConfig:
    """How the network is trained.

    Attributes:
        epochs: passes over the training split.
        batch_size: images per optimisation step.
        optimizer: ``sgd`` (with momentum), ``adam`` or ``rmsprop``.
        learning_rate: peak learning rate per step.
        momentum: momentum of sgd and rmsprop.
        schedule: ``constant``, ``step`` (times step_factor every step_epochs),
            ``cosine`` or ``linear`` (decay to zero at the end of the run) or
            ``plateau`` (times plateau_factor when the validation loss has not
            improved for plateau_patience epochs).
        warmup_epochs: linear warm-up from 0 before a cosine or linear decay, in
            epochs (at most half of the run).
        step_epochs: epochs between decays of the step schedule.
        step_factor: multiplier of each step decay.
        plateau_patience: epochs without improvement before a plateau decay.
        plateau_factor: multiplier of each plateau decay.
        seed: seed of weight initialisation, dropout and batch order.
        test_each_epoch: also evaluate the test split after every epoch (for the
            learning curves); the model is still chosen on validation only.
        label_smoothing: train softmax heads towards (1 - s) on the true class and
            s / K spread over all K classes (sigmoid heads: towards s/2 and 1 - s/2).
        tta: test-time augmentation of validation and test evaluation: ``none``, or
            ``flip`` (average the probabilities of each image and its mirror image;
            the saved model itself predicts without it).
        weight_decay: decoupled weight decay: every step each weight shrinks by
            ``learning rate x weight_decay`` of itself (Keras's optimizers'
            ``weight_decay``; unlike ``l2`` it is not part of the loss).
        time_budget: seconds of training and per-epoch evaluation (0: none, ``epochs``
            decide); the run plans its steps to fill them, the decay ending with the
            time (``fruitcnn.budget``). ``epochs`` is then not used.
    """

    epochs: int = 2
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 0.01
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.3
    step_epochs: int = 10
    step_factor: float = 0.1
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    seed: int = 0
    test_each_epoch: bool = True
    label_smoothing: float = 0.0
    tta: str = "none"
    time_budget: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self):
        if isinstance(self.time_budget, str):
            self.time_budget = parse_duration(self.time_budget)
        _check_field_types(self)
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs!r}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}.")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}; e.g. 0.9.")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}.")
        if self.time_budget < 0:
            raise ValueError(
                f"time_budget must be 0 (none) or a positive number of seconds, got {self.time_budget!r}."
            )
        if self.warmup_epochs < 0 or (self.warmup_epochs > self.epochs and not self.time_budget):
            raise ValueError(
                f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs!r}."
            )
        if self.step_epochs < 1 or self.plateau_patience < 1:
            raise ValueError("step_epochs and plateau_patience must be >= 1.")
        if self.tta not in TTAS:
            raise ValueError(f"tta must be one of {', '.join(TTAS)}, got {self.tta!r}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}; e.g. 0.1.")
        for name in ("step_factor", "plateau_factor"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)!r}.")


@dataclass
class RunConfig:
    """Everything that defines a run; saved as ``config.json``."""

    data: DataConfig = field(default_factory=DataConfig)
    arch: ArchConfig = field(default_factory=lambda: preset("line"))
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    head: str = "single"
    recipe: str = ""  # which recipe chose the settings not given, and why (fruitcnn.recipes)

    def __post_init__(self):
        _check_field_types(self)
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the layers also given in compact text."""
        data = asdict(self)
        data["arch"]["layers"] = [{"kind": spec.kind, **spec.params} for spec in self.arch.layers]
        data["arch"]["layers_text"] = layers_to_text(self.arch.layers)
        data["version"] = CONFIG_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        if not isinstance(data, dict):
            raise ValueError(f"a run configuration must be a JSON object, not {type(data).__name__}.")
        data = dict(data)
        version = data.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ValueError(
                f"config version {version} is not supported by this fruitcnn (expects {CONFIG_VERSION})."
            )
        for section in ("data", "arch", "train", "augment"):
            if not isinstance(data.get(section, {}), dict):
                raise ValueError(
                    f"the '{section}' section of a run configuration must be an object, "
                    f"not {data[section]!r}."
                )
        arch = dict(data.pop("arch", {}))
        arch.pop("layers_text", None)
        return cls(
            data=DataConfig(**_known_fields(DataConfig, data.pop("data", {}), "data")),
            arch=arch_from_dict(arch) if arch else preset("line"),
            train=TrainConfig(**_known_fields(TrainConfig, data.pop("train", {}), "train")),
            augment=AugmentConfig(**_known_fields(AugmentConfig, data.pop("augment", {}), "augment")),
            **_known_fields(cls, data, "run"),
        )


def _known_fields(cls, data: dict[str, Any], section: str) -> dict[str, Any]:
    names = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown {section} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}."
        )
    return data


# Settings by their train.py flag name (without --, '-' as '_') -> (RunConfig section, field).
# The section's dataclass default is the flag's default; study files use the same names.
SETTING_FIELDS: dict[str, tuple[str, str]] = {
    "dataset": ("data", "dataset"),
    "image_size": ("data", "image_size"),
    "images_per_class": ("data", "images_per_class"),
    "split": ("data", "split"),
    "val_fraction": ("data", "val_fraction"),
    "data_seed": ("data", "seed"),
    "data_dir": ("data", "data_dir"),
    "strict": ("data", "strict"),
    "unpack_limits": ("data", "unpack_limits"),
    "flip": ("augment", "flip"),
    "translate": ("augment", "translate"),
    "rotate": ("augment", "rotate"),
    "color_jitter": ("augment", "color_jitter"),
    "l2": ("arch", "l2"),
    "dropout": ("arch", "dropout"),
    "bn_momentum": ("arch", "bn_momentum"),
    "bn_test_batch_stats": ("arch", "bn_batch_stats_at_inference"),
    "bn_layer": ("arch", "bn_layer"),
    "normalize": ("arch", "normalize"),
    "init": ("arch", "init"),
    "head_layers": ("arch", "head_layers"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "optimizer": ("train", "optimizer"),
    "lr": ("train", "learning_rate"),
    "momentum": ("train", "momentum"),
    "schedule": ("train", "schedule"),
    "warmup_epochs": ("train", "warmup_epochs"),
    "step_epochs": ("train", "step_epochs"),
    "step_factor": ("train", "step_factor"),
    "plateau_patience": ("train", "plateau_patience"),
    "plateau_factor": ("train", "plateau_factor"),
    "seed": ("train", "seed"),
    "test_each_epoch": ("train", "test_each_epoch"),
    "label_smoothing": ("train", "label_smoothing"),
    "tta": ("train", "tta"),
    "time_budget": ("train", "time_budget"),
    "weight_decay": ("train", "weight_decay"),
}
# Settings that are not a single field: the architecture and the head choice.
SETTING_EXTRAS = ("arch", "multihead")


def setting_hint(name: str) -> str:
    """``did you mean 'lr'? `` for a near miss of a setting name (or a config field
    name such as ``learning_rate``), else an empty string."""
    known = [*SETTING_FIELDS, *SETTING_EXTRAS]
    by_field = {field_name: flag for flag, (_, field_name) in SETTING_FIELDS.items()}
    close = [by_field[name]] if name in by_field else difflib.get_close_matches(name, known, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def config_from_settings(
    settings: dict[str, Any],
    *,
    base: RunConfig | None = None,
    image_shape: tuple[int, int, int] | None = None,
    blocks: dict[str, str] | None = None,
) -> RunConfig:
    """A :class:`RunConfig` from settings named like train.py's flags.

    This is how train.py turns its flags and study files turn their entries into a
    run, so both accept the same names and values.

    Args:
        settings: ``SETTING_FIELDS`` names (``lr``, ``epochs``, ``flip`` ...) plus
            ``arch`` (preset, layer list or .json file) and ``multihead`` (bool).
        base: the run to change (default: the dataclass defaults).
        image_shape: (H, W, C) of the data; picks the default architecture when
            neither ``arch`` nor ``base`` gives one (see :func:`default_preset`).
        blocks: blocks that an ``arch`` layer list may call besides ``BLOCKS``.

    Raises:
        ValueError: an unknown name (with the closest known one) or a bad value.
    """
    known = [*SETTING_FIELDS, *SETTING_EXTRAS]
    for name in settings:
        if name not in known:
            raise ValueError(
                f"unknown setting {name!r}; {setting_hint(name)}settings are train.py's flag names with '_' "
                f"for '-': {', '.join(known)}."
            )
    if "time_budget" in settings and "epochs" in settings:
        raise ValueError(
            "give a number of epochs or a time budget, not both: with --time-budget the run plans its "
            "epochs to fill the time."
        )
    changes: dict[str, dict[str, Any]] = {"data": {}, "arch": {}, "train": {}, "augment": {}}
    for name, value in settings.items():
        if name in SETTING_FIELDS:
            section, field_name = SETTING_FIELDS[name]
            changes[section][field_name] = value
    if "epochs" in settings:  # epochs given: a base config's time budget no longer applies
        changes["train"]["time_budget"] = 0.0
    data = dataclasses.replace(base.data if base else DataConfig(), **changes["data"])
    if settings.get("arch"):
        if not isinstance(settings["arch"], str):
            raise ValueError(
                f"arch must be a preset name, layer list or .json path, got {settings['arch']!r}."
            )
        arch = resolve_arch(settings["arch"], blocks)
    elif base is not None:
        arch = base.arch
    else:
        arch = resolve_arch(default_preset(data.dataset, image_shape))
    head = base.head if base else "single"
    if "multihead" in settings:
        if not isinstance(settings["multihead"], bool):
            raise ValueError(f"multihead must be true or false, got {settings['multihead']!r}.")
        head = "multi" if settings["multihead"] else "single"
    return RunConfig(
        data=data,
        arch=dataclasses.replace(arch, **changes["arch"]),
        train=dataclasses.replace(base.train if base else TrainConfig(), **changes["train"]),
        augment=dataclasses.replace(base.augment if base else AugmentConfig(), **changes["augment"]),
        head=head,
    )
