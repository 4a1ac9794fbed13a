"""The training sections and the whole run: :class:`AugmentConfig`, :class:`TrainConfig`
and :class:`RunConfig`, which holds them with the data, the architecture and the head
choice and is saved as ``config.json``.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from fruitcnn.config.arch import ArchConfig, arch_from_dict, preset
from fruitcnn.config.data import DataConfig
from fruitcnn.config.fields import _check_field_types, _known_fields, setting_field
from fruitcnn.config.language import layers_to_text

CONFIG_VERSION = 1
OPTIMIZERS = ("sgd", "adam", "rmsprop")
SCHEDULES = ("constant", "step", "cosine", "linear", "plateau")
HEADS = ("single", "multi")
TTAS = ("none", "flip")
FLIPS = ("none", "horizontal", "vertical", "both")
STRATEGIES = ("default", "mirrored", "multiworker")
PRECISIONS = ("float32", "mixed_bfloat16")


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

    flip: str = setting_field("none", "--flip", "random mirroring", choices=FLIPS)
    translate: int = setting_field(
        0, "--translate", "random shift by up to N pixels (reflection padding)", type=int, metavar="N"
    )
    rotate: float = setting_field(
        0.0, "--rotate", "random rotation by up to D degrees", type=float, metavar="D"
    )
    color_jitter: float = setting_field(
        0.0,
        "--color-jitter",
        "random brightness/contrast/saturation factor in [1-J, 1+J]",
        type=float,
        metavar="J",
    )

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
            learning curves); the model is still chosen on validation only. Off, the
            test split is evaluated once, at the end.
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
        strategy: where the steps run (``fruitcnn.distributed``).
        precision: ``float32``, or ``mixed_bfloat16``: the training steps (and the
            per-epoch evaluations) compute in bfloat16 with float32 weights (Keras's
            mixed-precision policy; the loss and the heads' outputs stay float32).
            The saved model is float32 either way, and metrics.json's figures are
            that model's. Worth it where the CPU multiplies bfloat16 natively (AMX,
            AVX512-BF16): the photo recipe measures both and chooses.
    """

    epochs: int = setting_field(2, "--epochs", "epochs", type=int, metavar="N")
    batch_size: int = setting_field(128, "--batch-size", "images per step", type=int, metavar="N")
    optimizer: str = setting_field("adam", "--optimizer", "optimizer", choices=OPTIMIZERS)
    learning_rate: float = setting_field(0.01, "--lr", "peak learning rate", type=float, metavar="F")
    momentum: float = setting_field(0.9, "--momentum", "momentum of sgd and rmsprop", type=float, metavar="F")
    schedule: str = setting_field("cosine", "--schedule", "learning-rate schedule", choices=SCHEDULES)
    warmup_epochs: float = setting_field(
        0.3, "--warmup-epochs", "cosine, linear: warm-up length in epochs", type=float, metavar="F"
    )
    step_epochs: int = setting_field(
        10, "--step-epochs", "step: epochs between decays", type=int, metavar="N"
    )
    step_factor: float = setting_field(0.1, "--step-factor", "step: decay factor", type=float, metavar="F")
    plateau_patience: int = setting_field(
        2, "--plateau-patience", "plateau: epochs without val-loss improvement", type=int, metavar="N"
    )
    plateau_factor: float = setting_field(
        0.5, "--plateau-factor", "plateau: decay factor", type=float, metavar="F"
    )
    seed: int = setting_field(
        0, "--seed", "seed of initialisation, dropout and batch order", type=int, metavar="N"
    )
    test_each_epoch: bool = setting_field(
        True,
        "--test-each-epoch",
        "evaluate the test split after every epoch too, for its curve (--no-test-each-epoch: only at "
        "the end)",
        action=argparse.BooleanOptionalAction,
        shown_default="after every epoch; the photo recipe: only at the end",
    )
    label_smoothing: float = setting_field(
        0.0, "--label-smoothing", "label smoothing of the cross-entropy", type=float, metavar="S"
    )
    tta: str = setting_field(
        "none",
        "--tta",
        "test-time augmentation of val/test evaluation (flip: average with the mirror image)",
        choices=TTAS,
    )
    time_budget: float = setting_field(
        0.0,
        "--time-budget",
        "instead of --epochs: train for T (300, 300s, 5m, 1h30m) of steps and per-epoch evaluations, "
        "the learning-rate decay ending when the time is up; data loading, the final evaluation and the "
        "report are outside it",
        type=parse_duration,
        metavar="T",
        shown_default="none; colour photos without --epochs: 5m, see the recipe below",
        listed_after="--epochs",
    )
    weight_decay: float = setting_field(
        0.0,
        "--weight-decay",
        "decoupled weight decay: each step every weight shrinks by lr x F of itself",
        type=float,
        metavar="F",
    )
    strategy: str = setting_field(
        "default",
        "--strategy",
        "where the steps run: default (this process), mirrored (all local GPUs), multiworker (the "
        "workers of TF_CONFIG; start them with python -m fruitcnn.distributed); --batch-size is the "
        "global batch",
        choices=STRATEGIES,
    )
    precision: str = setting_field(
        "float32",
        "--precision",
        "arithmetic of the training steps: float32, or mixed_bfloat16 (bfloat16 products, float32 "
        "weights; the saved model is float32)",
        choices=PRECISIONS,
        shown_default="float32; colour photos without --arch: chosen by the recipe",
    )

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
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
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
