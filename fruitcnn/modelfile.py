"""Reading ``.keras`` files: fruitcnn's own models and checkpoints, and models made elsewhere.

* :func:`load_keras` checks that a file is a complete ``.keras`` archive before Keras opens
  it, loads it in Keras's safe mode (a ``Lambda`` layer carrying Python code is refused),
  and turns every failure into a ``ValueError`` that names the file and what is wrong
  ("not a valid .keras file: ... truncated").
* :func:`load_model` is what explain.py, report.py and the inspection page use: any
  image classifier comes back in fruitcnn's form (:func:`fruitcnn_form`), so every
  explanation and evaluation works on it.
* :func:`adapt_model` rebuilds a model made elsewhere (Sequential or functional, one
  tensor, a list or a dict of outputs) in that form, or says what was found and what
  is needed.

fruitcnn's form: one image input in pixel units 0-255, outputs ``{head: probabilities}``,
and for every head a layer ``<head>_logits`` holding the logits before the softmax or
sigmoid (explanations take gradients there).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import keras

import fruitcnn.layers  # noqa: F401  (registers BatchNorm, HorizontalFlip for loading)
from fruitcnn.config import INPUT_RANGE_CHOICES, INPUT_RANGES
from heads import LOGITS_SUFFIX  # importing heads registers its metrics and losses for loading

MODEL_FILE = "model.keras"
# The members Keras 3 writes into every .keras archive.
KERAS_MEMBERS = ("config.json", "model.weights.h5")
# Layers that show a model takes raw pixels (it scales them itself).
_SCALING_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization)
_PROBABILITY_KINDS = ("softmax", "sigmoid")


def check_keras_file(path: str | Path) -> Path:
    """``path`` if it is a complete ``.keras`` archive (a zip holding config.json and
    model.weights.h5 whose members all read back with the right checksums).

    Raises:
        ValueError: "not a valid .keras file", with what was found.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"no model file at {path}; expected a .keras file or a run folder holding model.keras."
        )
    expected = "a .keras file is a zip archive holding config.json and model.weights.h5, as model.save writes"
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a valid .keras file: it is not a zip archive (truncated, or another format; "
            f"{expected}). Save the model again, or copy the file again."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [name for name in KERAS_MEMBERS if name not in names]
            if missing:
                raise ValueError(
                    f"{path} is not a valid .keras file: it has no {', '.join(missing)} ({expected}; "
                    f"found {', '.join(sorted(names)[:5]) or 'nothing'})."
                )
            broken = archive.testzip()
            if broken is not None:
                raise ValueError(f"{path} is not a valid .keras file: its member {broken} is damaged.")
            json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a valid .keras file: {type(error).__name__}: {error}.") from None
    return path


def load_keras(path: str | Path, *, compile: bool = False) -> keras.Model:
    """A ``.keras`` file as Keras loads it (fruitcnn's layers registered, safe mode on).

    Raises:
        ValueError: a file that is missing, damaged, refused by safe mode or not loadable,
            named with the reason.
    """
    path = check_keras_file(path)
    try:
        return keras.models.load_model(path, compile=compile)
    except ValueError as error:
        if "safe_mode" in str(error) or "Lambda" in str(error):
            raise ValueError(
                f"{path} was refused: it holds Python code (a Lambda layer), which could do anything when "
                "loaded. Only load such a file from a source you trust, in your own code with "
                "keras.models.load_model(..., safe_mode=False)."
            ) from None
        raise ValueError(f"{path} could not be loaded as a Keras model: {error}") from None
    except (TypeError, KeyError, AttributeError, OSError, IndexError) as error:
        raise ValueError(
            f"{path} could not be loaded as a Keras model ({type(error).__name__}: {error}); it may use "
            "layers of another program (load it in that program's code) or be damaged."
        ) from None


def load_model(
    path: str | Path, *, input_range: str = "auto", head_names: Sequence[str] | None = None
) -> keras.Model:
    """A model file (or a run folder's model.keras) in fruitcnn's form, uncompiled.

    Args:
        path: a ``.keras`` file or a run folder.
        input_range: the pixel range a model made elsewhere expects (see
            :func:`adapt_model`); fruitcnn's own models take 0-255.
        head_names: names for the outputs of a model made elsewhere (e.g. the heads
            of the run's classes.json); default: its output names.

    Raises:
        ValueError: a file that cannot be loaded, or a model that cannot be explained
            (with what was found and what is needed).
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    return adapt_model(load_keras(path), input_range=input_range, head_names=head_names)


def fruitcnn_form(model: keras.Model) -> bool:
    """Whether ``model`` maps images to ``{head: probabilities}`` with a ``<head>_logits``
    layer for every head (models built by ``fruitcnn.model.build_model``)."""
    output = getattr(model, "output", None)
    if not isinstance(output, dict) or not output:
        return False
    names = {layer.name for layer in model.layers}
    return all(f"{head}{LOGITS_SUFFIX}" in names and head in names for head in output)


def adapt_model(
    model: keras.Model, *, input_range: str = "auto", head_names: Sequence[str] | None = None
) -> keras.Model:
    """``model`` in fruitcnn's form: itself when it is already, else rebuilt around it.

    A model made elsewhere keeps its weights; every output becomes a head: an output
    from a Dense (or conv) layer with ``softmax``/``sigmoid`` gets a linear copy of that
    layer as its ``<head>_logits``; one from a ``Softmax`` or ``Activation`` layer takes
    that layer's input as logits; a linear output is taken as logits (softmax over
    several units, sigmoid over one). Inputs are rescaled from 0-255 pixels to
    ``input_range`` by a ``Rescaling`` layer in front.

    Args:
        model: any Keras model with one image input.
        input_range: ``0-255``, ``0-1`` or ``-1-1``: the pixel range the model was
            trained on; ``auto``: 0-255 for fruitcnn's models and for models that begin
            with a ``Rescaling`` or ``Normalization`` layer, else an error asking for it.
        head_names: names for the heads, in output order (when their number matches).

    Raises:
        ValueError: what was found and what is needed.
    """
    if input_range not in INPUT_RANGE_CHOICES:
        raise ValueError(f"input range {input_range!r}? expected one of {', '.join(INPUT_RANGE_CHOICES)}.")
    if fruitcnn_form(model):
        if input_range not in ("auto", "0-255"):
            raise ValueError(
                f"this is a fruitcnn model, which takes pixels in 0-255 and normalises them itself; "
                f"drop --input-range {input_range}."
            )
        return model
    shape = _image_shape(model)
    scale, offset = INPUT_RANGES[_input_range(model, input_range)]
    graph = _rebuilt(model, keras.Input(shape, name="image"), scale, offset)
    outputs = _output_tensors(graph)
    names = _head_names(model, graph, outputs, head_names)
    heads = {}
    for name, tensor in zip(names, outputs):
        logits, kind = _logits(graph, tensor, name)
        heads[name] = keras.layers.Activation(kind, name=name)(logits)
    return keras.Model(graph.inputs, heads, name=f"{model.name}_fruitcnn")


def _rebuilt(model: keras.Model, image, scale: float, offset: float) -> keras.Model:
    """A copy of ``model`` on the input ``image`` (rescaled first unless scale 1, offset
    0) with its weights. Copied layers are called once each, so every layer's ``output``
    is the one in this graph (a Sequential loaded from a file calls its layers several
    times, and ``layer.output`` would be another graph's)."""
    source = image
    if (scale, offset) != (1.0, 0.0):
        source = keras.layers.Rescaling(scale, offset, name="input_range")(image)
    if isinstance(model, keras.Sequential):
        tensor = source
        for layer in model.layers:
            tensor = type(layer).from_config(layer.get_config())(tensor)
        copy = keras.Model(image, tensor, name=model.name)
    else:

        def call(layer, *args, **kwargs):  # the model's first layers take the rescaled pixels
            if args and args[0] is image:
                args = (source, *args[1:])
            return layer(*args, **kwargs)

        copy = keras.models.clone_model(model, input_tensors=image, call_function=call)
        copy = keras.Model(image, copy.outputs, name=model.name)
    copy.set_weights(model.get_weights())
    return copy


def _image_shape(model: keras.Model) -> tuple[int, int, int]:
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        raise ValueError(
            f"this model takes {len(inputs)} inputs; fruitcnn explains and evaluates image classifiers with "
            "one image input (H, W, C)."
        )
    shape = tuple(inputs[0].shape[1:])
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise ValueError(
            f"this model's input has shape {shape}; fruitcnn needs images (H, W, C) with 1 or 3 channels "
            "(channels last)."
        )
    if shape[0] is None or shape[1] is None:
        raise ValueError(
            f"this model accepts images of any size {shape}; fruitcnn needs a fixed size: rebuild it on "
            "keras.Input(shape=(H, W, C)) with the size it was trained on and save it again."
        )
    return tuple(int(size) for size in shape)


def _input_range(model: keras.Model, asked: str) -> str:
    if asked != "auto":
        return asked
    first = next((layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)), None)
    if isinstance(first, _SCALING_LAYERS):
        return "0-255"
    what = f"{type(first).__name__} {first.name!r}" if first is not None else "nothing"
    raise ValueError(
        f"this model was not made by fruitcnn and its first layer is {what}, not Rescaling or "
        "Normalization, so it is unknown which pixel range it expects: pass --input-range 0-1 (trained on "
        "images divided by 255), -1-1, or 0-255."
    )


def _output_tensors(graph: keras.Model) -> list:
    outputs = graph.outputs
    for tensor in outputs:
        if len(tensor.shape) != 2:
            raise ValueError(
                f"this model has an output of shape {tuple(tensor.shape)}; fruitcnn needs class scores "
                "(batch, classes) per output."
            )
    return list(outputs)


def _head_names(model, graph, outputs, given) -> list[str]:
    """Names of the heads: ``given`` when it fits, else the output names (``class`` for a
    single output); ``_head`` is added to a name that a layer of the model already has."""
    if given is not None and len(given) == len(outputs):
        names = [str(name) for name in given]
    elif isinstance(getattr(model, "output", None), dict):
        names = [str(name) for name in model.output]
    elif len(outputs) == 1:
        names = ["class"]
    else:
        names = [_producer(graph, tensor).name for tensor in outputs]
    taken = {layer.name for layer in graph.layers}
    unique: list[str] = []
    for name in names:
        while name in taken or name in unique or f"{name}{LOGITS_SUFFIX}" in taken:
            name = f"{name}_head"
        unique.append(name)
    return unique


def _producer(graph: keras.Model, tensor):
    """The layer whose output ``tensor`` is."""
    for layer in graph.layers:
        produced = layer.output
        if produced is tensor or (isinstance(produced, (list, tuple)) and any(t is tensor for t in produced)):
            return layer
    raise ValueError("cannot find the layer that makes one of this model's outputs.")


def _activation_name(layer) -> str:
    value = layer.get_config().get("activation", "linear")
    return value if isinstance(value, str) else str(value.get("config", {}).get("name", value))


def _logits(graph: keras.Model, tensor, head: str):
    """(the logits of the output ``tensor``, as a ``<head>_logits`` layer; softmax or sigmoid)."""
    layer = _producer(graph, tensor)
    units = int(tensor.shape[-1])
    name = f"{head}{LOGITS_SUFFIX}"
    if isinstance(layer, keras.layers.Softmax):
        activation = "softmax"
    elif isinstance(layer, keras.layers.Activation):
        activation = _activation_name(layer)
        if activation not in _PROBABILITY_KINDS:
            raise _unusable(layer, activation)
    else:
        activation = _activation_name(layer) if "activation" in layer.get_config() else None
        if activation is None:
            raise _unusable(layer, "none")
        if activation == "linear":
            return keras.layers.Identity(name=name)(tensor), "sigmoid" if units == 1 else "softmax"
        if activation not in _PROBABILITY_KINDS:
            raise _unusable(layer, activation)
        copy = type(layer).from_config({**layer.get_config(), "activation": "linear", "name": name})
        logits = copy(layer.input)
        copy.set_weights(layer.get_weights())
        return logits, _kind(activation, units, layer)
    return keras.layers.Identity(name=name)(layer.input), _kind(activation, units, layer)


def _kind(activation: str, units: int, layer) -> str:
    if activation == "sigmoid" and units > 1:
        raise ValueError(
            f"output layer {layer.name!r} has {units} sigmoid units (several labels per image); fruitcnn "
            "explains one class per head: a softmax over the classes, or one sigmoid unit for two."
        )
    if activation == "softmax" and units < 2:
        raise ValueError(f"output layer {layer.name!r} is a softmax over {units} unit; it needs 2 or more.")
    return activation


def _unusable(layer, activation: str) -> ValueError:
    return ValueError(
        f"an output of this model comes from layer {layer.name!r} ({type(layer).__name__}, activation "
        f"{activation}); fruitcnn needs the class scores of a Dense layer (linear, softmax or sigmoid) or of "
        "a Softmax / Activation('softmax' or 'sigmoid') layer, so that it can explain the logits."
    )
