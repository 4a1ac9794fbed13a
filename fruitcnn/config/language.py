"""The layer language: how a feature extractor (and each head's layers) is written.

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

import math
import re
from dataclasses import dataclass, field
from typing import Any

from fruitcnn.config.fields import _is_number

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


_TOKEN = re.compile(r"\s*(?:(\d+)\s*\*\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^()]*)\))?\s*[,;]?")
_GROUP = re.compile(r"(\d+)\s*\*\s*\[([^\[\]]*)\]")
# A template variable, {name}: block parameters here, study variables in app.study.plan.
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
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
    return list(dict.fromkeys(PLACEHOLDER.findall(text)))


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
    stray = PLACEHOLDER.search(text)
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
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], body)


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
