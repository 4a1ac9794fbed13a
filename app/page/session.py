"""What the inspection page works on, apart from HTTP: the runs it may open, each run's
model, classes and test split (loaded once and kept), uploaded images (decoded in
memory, never written); the explanation jobs are in :mod:`app.page.jobs`.

Everything the page asks for is named by the server: a run by its folder name under the
root (one of :meth:`Runs.names`, never a path from the client), an image by a sample's
split and index or by an upload's token, a layer and a method by the names the model
and the registry (``visualize.methods``) give.
"""

from __future__ import annotations

import csv
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from fruitcnn import runs
from fruitcnn.config import RunConfig
from fruitcnn.data import load_dataset
from fruitcnn.data.images import ImageReadError, decode
from fruitcnn.data.rows import Rows
from fruitcnn.training import head_specs
from heads import head_targets
from visualize.gradcam import conv_layers, default_layer
from visualize.methods import METHODS
from visualize.occlusion import default_patch
from visualize.targets import class_probabilities, load_explained_model

# Uploads: at most this many bytes (a 12-megapixel JPEG is about 5 MB), and the last
# this many kept in memory (older tokens answer "unknown image").
MAX_UPLOAD_BYTES = 20 << 20
KEPT_UPLOADS = 64
# Top predictions listed per head.
TOP_K = 5
# Samples listed per page of the test-split browser at most.
MAX_SAMPLES = 200
SPLITS = ("test", "val", "train")


class NotFound(LookupError):
    """Something the client named does not exist (a run, an image, a job)."""


@dataclass
class RunSession:
    """One opened run: its model and classes, and (on first use) its data and the
    model's predictions on each split."""

    name: str
    folder: Path
    model: keras.Model
    classes: dict[str, list[str]]
    config: RunConfig | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    dataset: Any = None
    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    truth: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(size) for size in self.model.inputs[0].shape[1:])

    @property
    def feature_layers(self) -> list[str]:
        """The layers with feature maps (Grad-CAM, activations and filters take them)."""
        return [
            layer.name
            for layer in self.model.layers
            if not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4
        ]

    def describe(self) -> dict[str, Any]:
        """The run as the page shows it: heads and classes, layers, methods, defaults,
        and the quality scores of its report when it has them."""
        height, width, channels = self.image_shape
        convs = conv_layers(self.model)
        metrics = _read(self.folder / runs.METRICS_FILE) or {}
        return {
            "name": self.name,
            "heads": self.classes,
            "image": {"height": height, "width": width, "channels": channels},
            "layers": self.feature_layers,
            "conv_layers": convs,
            "default_layer": default_layer(self.model) if convs else None,
            "methods": [
                {"name": name, "kind": method.kind, "summary": method.summary}
                for name, method in METHODS.items()
            ],
            "defaults": {"patch": default_patch((height, width, channels)), "stride": 1, "fill": "mean"},
            "test_accuracy": metrics.get("test_accuracy"),
            "dataset": self.config.data.dataset if self.config else None,
            "quality": _quality_scores(self.folder),
        }

    def split(self, name: str):
        """A split of the run's data (read on first use, with the run's own config)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}.")
        if self.config is None:
            raise ValueError(f"{self.name} has no {runs.CONFIG_FILE}: only uploaded images can be explained.")
        with self.lock:
            if self.dataset is None:
                self.dataset = load_dataset(self.config.data)
            if name not in self.predictions:
                split = self.dataset.splits[name]
                # streamed rows (--stream) a chunk at a time: the split is not held in memory
                streamed = isinstance(split.images, Rows) and len(split)
                chunks = split.images.chunks() if streamed else (split.images,)
                found = [class_probabilities(self.model, chunk, self.classes) for chunk in chunks]
                self.predictions[name] = {
                    head: np.concatenate([probabilities[head] for probabilities in found])
                    for head in self.classes
                }
                specs = head_specs(self.config, self.dataset)
                targets = head_targets(specs, split.labels, split.attributes)
                self.truth[name] = {
                    spec.name: np.asarray(targets[spec.name]).reshape(-1).astype(np.int64) for spec in specs
                }
        return self.dataset.splits[name]

    def samples(self, split: str, head: str, *, only: str, true: int | None, predicted: int | None,
                order: str, offset: int, limit: int) -> dict[str, Any]:  # fmt: skip
        """A page of the split's images with the head's true and predicted class and the
        predicted probability: ``only`` all/wrong/right, filtered by class, in index
        order or most confident first (``order="confidence"``: most confident mistakes
        first when ``only="wrong"``)."""
        self._check_head(head)
        data = self.split(split)
        probabilities = self.predictions[split][head]
        predictions = probabilities.argmax(axis=1)
        truth = self.truth[split][head]
        keep = np.ones(len(data), bool)
        if only not in ("all", "wrong", "right"):
            raise ValueError(f"only must be all, wrong or right, got {only!r}.")
        if only != "all":
            keep &= (predictions != truth) if only == "wrong" else (predictions == truth)
        for value, column in ((true, truth), (predicted, predictions)):
            if value is not None:
                self._check_class(head, value)
                keep &= column == value
        chosen = np.flatnonzero(keep)
        confidence = probabilities[np.arange(len(data)), predictions]
        if order == "confidence":
            chosen = chosen[np.argsort(-confidence[chosen], kind="stable")]
        elif order != "index":
            raise ValueError(f"order must be index or confidence, got {order!r}.")
        if not 1 <= limit <= MAX_SAMPLES or offset < 0:
            raise ValueError(
                f"limit must be 1..{MAX_SAMPLES} and offset at least 0, got {limit} and {offset}."
            )
        names = self.classes[head]
        items = [
            {
                "index": int(index),
                "true": names[int(truth[index])],
                "predicted": names[int(predictions[index])],
                "probability": round(float(confidence[index]), 4),
                "correct": bool(truth[index] == predictions[index]),
            }
            for index in chosen[offset : offset + limit]
        ]
        return {"split": split, "head": head, "total": int(len(chosen)), "of": int(len(data)), "items": items}

    def sample_image(self, split: str, index: int) -> np.ndarray:
        data = self.split(split)
        if not 0 <= index < len(data):
            raise NotFound(f"the {split} split has images 0..{len(data) - 1}, not {index}.")
        return data.images[index]

    def sample_truth(self, split: str, index: int) -> dict[str, str]:
        self.sample_image(split, index)
        return {head: self.classes[head][int(values[index])] for head, values in self.truth[split].items()}

    def predict(self, image: np.ndarray) -> dict[str, list[dict[str, Any]]]:
        """The top predictions of every head for one image."""
        with self.lock:
            probabilities = class_probabilities(self.model, image[None], self.classes)
        found = {}
        for head, values in probabilities.items():
            order = np.argsort(-values[0], kind="stable")[:TOP_K]
            found[head] = [
                {
                    "class": self.classes[head][int(index)],
                    "index": int(index),
                    "probability": float(values[0, index]),
                }
                for index in order
            ]
        return found

    def _check_head(self, head: str) -> None:
        if head not in self.classes:
            raise ValueError(f"unknown head {head!r}; this model's heads are {', '.join(self.classes)}.")

    def _check_class(self, head: str, index: int) -> None:
        if not 0 <= index < len(self.classes[head]):
            raise ValueError(f"head {head} has classes 0..{len(self.classes[head]) - 1}, not {index}.")

    def check_target(self, head: str, target: int) -> None:
        self._check_head(head)
        self._check_class(head, target)

    def check_layer(self, layer: str | None) -> str:
        """A layer with feature maps (the default one when None)."""
        if layer is None:
            if not conv_layers(self.model):
                raise ValueError("this model has no conv layer; Grad-CAM, activations and filters need one.")
            return default_layer(self.model)
        if layer not in self.feature_layers:
            raise ValueError(
                f"unknown layer {layer!r}; this model's layers with feature maps are "
                f"{', '.join(self.feature_layers) or 'none'}."
            )
        return layer


def _read(path: Path):
    try:
        return runs.read_json(path) if path.is_file() else None
    except ValueError:
        return None


def _quality_scores(folder: Path) -> list[dict[str, Any]]:
    """The explanation-quality tables of the run's report (report --quality-images N),
    one row per head and method; empty when the report has none."""
    rows = []
    for path in sorted((folder / runs.REPORT_DIR).glob("quality*.csv")):
        if path.name.startswith("quality-curves"):
            continue
        head = path.stem.removeprefix("quality").lstrip("-") or None
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                rows.append({"head": head, **row})
    return rows


class Runs:
    """The runs under a root folder, opened on first use and kept (a model and its
    compiled explanation functions are reused by every later request)."""

    def __init__(self, root: Path, *, input_range: str = "auto"):
        self.root = Path(root)
        self.input_range = input_range
        self.sessions: dict[str, RunSession] = {}
        self.lock = threading.Lock()

    def names(self) -> list[dict[str, Any]]:
        """Every finished run under the root, newest first, with what the page lists."""
        listed = []
        for folder in reversed(runs.finished_runs(self.root)):
            metrics = _read(folder / runs.METRICS_FILE) or {}
            config = _read(folder / runs.CONFIG_FILE) or {}
            listed.append(
                {
                    "name": folder.name,
                    "dataset": (config.get("data") or {}).get("dataset"),
                    "head": config.get("head"),
                    "test_accuracy": metrics.get("test_accuracy"),
                }
            )
        return listed

    def open(self, name: str) -> RunSession:
        """The run named ``name`` (one of :meth:`names`), loaded once."""
        with self.lock:
            if name in self.sessions:
                return self.sessions[name]
            known = {folder.name: folder for folder in runs.finished_runs(self.root)}
            if name not in known:
                raise NotFound(
                    f"no finished run {name!r} under {self.root}; the page lists the runs it can open."
                )
            folder = known[name]
            model, classes = load_explained_model(folder, input_range=self.input_range)
            config_data = _read(folder / runs.CONFIG_FILE)
            config = RunConfig.from_dict(config_data) if config_data else None
            self.sessions[name] = RunSession(name, folder, model, classes, config)
            return self.sessions[name]


class Uploads:
    """Uploaded images, decoded with fruitcnn's reader (sizes and decompression bombs
    checked) and kept in memory by token; the oldest are forgotten beyond KEPT_UPLOADS."""

    def __init__(self):
        self.images: OrderedDict[str, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def add(self, content: bytes, shape: tuple[int, int, int]) -> str:
        if len(content) > MAX_UPLOAD_BYTES:
            raise ValueError(
                f"the upload has {len(content):,} bytes; at most {MAX_UPLOAD_BYTES:,} are accepted."
            )
        if not content:
            raise ValueError("the upload is empty; choose an image file (PNG, JPEG, BMP, GIF, TIFF, WebP).")
        try:
            image = decode(content, shape[:2], shape[2])
        except ImageReadError as error:
            raise ValueError(f"not a readable image: {error}.") from None
        token = secrets.token_hex(8)
        with self.lock:
            self.images[token] = image
            while len(self.images) > KEPT_UPLOADS:
                self.images.popitem(last=False)
        return token

    def get(self, token: str) -> np.ndarray:
        with self.lock:
            if token not in self.images:
                raise NotFound(f"unknown image {token!r}; upload it again.")
            return self.images[token]
