"""Recipes: the settings a run gets from its data and architecture when the user leaves
them out (every one can be given by its flag, which wins).

* :func:`architecture_settings`: what an architecture needs to train at all. A network
  without batch norm gets Adam at 0.001 (and, through ``--init auto``, He-normal
  kernels): the ECE4179 deep net stayed at chance (loss 2.303 for 6 epochs) with Adam
  at 0.01, trained with 0.001 (38% after 3 epochs on the 96-px stand-in, 42% with He
  init), and also failed with SGD at 0.05.
* :func:`photo_recipe`: colour photos (not the line dataset) get an airbench-like network
  (Keller Jordan's CIFAR-10 speed runs, made for a CPU): a frozen 2x2 whitening conv,
  three conv-pool-bn-relu blocks of widths w, 4w, 4w, global max pooling, a hidden fc
  layer and logits scaled by 1/9; SGD with Nesterov momentum 0.85 at 1.5 x batch / 1024,
  decoupled weight decay 0.0089, label smoothing 0.2, linear warm-up and decay, flips and
  translations by a sixteenth of the side, test-time flips, batch norm momentum 0.4.
  Larger images are max-pooled to about 32 pixels after the whitening. Without
  ``--epochs`` it trains for a time budget (5 minutes unless given), and the width w is
  the largest whose ``TARGET_EPOCHS`` epochs fit into it at this machine's speed
  (measured: the fp32 matmul peak times ``EFFICIENCY``, or in mixed precision the
  bfloat16 peak times ``EFFICIENCY_BF16``). It trains in ``mixed_bfloat16`` where
  bfloat16 matmuls run at least ``BF16_ADVANTAGE`` times as fast as float32 ones, and
  on a time budget evaluates the test split once, at the end (validation and test after
  every epoch took 9-12% of CIFAR-10's budgets; the test part is 2/3 of that).

:func:`run_config` is where they meet the user's flags: ``train.py`` and study trials
make their configuration through it.

Measured on CIFAR-10, comparing at equal training FLOPs (2026-12-03, see the README):
whitening +0.8 points, batch 512 against 1024 +1.5, test-time flips +1.2; Lookahead and
label smoothing changed nothing beyond the seed-to-seed spread (0.3 points) at 4 epochs;
about 7 epochs of the widest net that fits beat wider nets for fewer epochs (84.2% vs
82.6% at about 270 MFLOP-epochs).

This module imports no TensorFlow at the top (Keras and TensorFlow load in the two
functions that need them): bench/run.py's --help and flag checks import it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

from fruitcnn.config import (
    ArchConfig,
    RunConfig,
    config_from_settings,
    default_preset,
    parse_layers,
    resolve_arch,
)

# Images up to this side are used at their size; larger ones are max-pooled after the
# whitening to about this side (the blocks' cost grows with the square of the side).
WORKING_SIDE = 32
# Candidate first-block widths of the photo network (the next blocks have 4 times).
WIDTHS = (16, 24, 32, 48, 64)
# Epochs the photo recipe plans for: at about 7 epochs, the widest net that fits did best.
TARGET_EPOCHS = 7
# Training throughput as a share of the fp32 matmul peak, for sizing the network: 0.36
# over a whole 270-s CIFAR-10 run of width 16 (bench/run.py cifar10, 2026-12-03, peak 285
# GFLOP/s), 0.46-0.65 for widths 16-48 in steady-state step timings; the budget's planner
# fits the epochs to the real speed, this only sizes the network.
EFFICIENCY = 0.4
# The time budget of a photo run given neither --epochs nor --time-budget (seconds).
DEFAULT_BUDGET_S = 300.0
# Optimiser of the photo recipe: peak learning rate per 1024 images of a batch.
LR_PER_1024 = 1.5
# Share of the run spent warming the learning rate up (airbench: 23%).
WARMUP_SHARE = 0.23
# The photo recipe's batch leaves at least this many steps in an epoch (tiny data sets).
MIN_STEPS_PER_EPOCH = 4
# A network without batch norm: Adam at this rate.
RATE_WITHOUT_BN = 1e-3
# Mixed bfloat16 precision is chosen where bfloat16 matmuls run at least this many times
# as fast as float32 ones (CPUs with AMX or AVX512-BF16: 4.5x measured on the 2-core
# machine, which has AMX, 1,707 against 375 GFLOP/s; without those instructions no gain
# is expected, not measured here).
BF16_ADVANTAGE = 2.0
# Training throughput as a share of the bfloat16 matmul peak, for sizing the network
# in mixed precision: 0.226 over the steps of a whole 270-s CIFAR-10 run of width 32
# (2026-12-05, peak 1,707 GFLOP/s; 0.24-0.28 in steady-state steps without the input
# pipeline): whole steps gain 1.6-2x over float32, not the matmuls' 4.5x (batch norm,
# pooling, augmentation and the conversions do not speed up).
EFFICIENCY_BF16 = 0.22
# A matmul product slower than this (seconds) is not measured again: at 2048-square, a
# speed below 17 GFLOP/s, which no choice depends on the exact value of.
SLOW_PRODUCT_S = 1.0


@dataclass
class Recipe:
    """Settings (train.py's names) chosen for the data, and why, in words."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    arch_name: str = ""  # the name of the architecture it chose (config.json's arch.name)

    def text(self) -> str:
        """One paragraph for the start of a run."""
        chosen = ", ".join(f"{key}={value}" for key, value in self.settings.items())
        return f"recipe {self.name}: {chosen}" + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def has_batch_norm(arch: ArchConfig) -> bool:
    return any(spec.kind == "bn" for spec in arch.layers)


def architecture_settings(arch: ArchConfig) -> Recipe:
    """What ``arch`` needs to train out of the box (see the module docstring)."""
    if has_batch_norm(arch):
        return Recipe("with batch norm")
    return Recipe(
        "without batch norm",
        {"optimizer": "adam", "lr": RATE_WITHOUT_BN},
        ["no batch norm: Adam at 0.001 and He-normal kernels (at 0.01 such nets stay at chance)"],
    )


def photo_layers(width: int, side: int) -> str:
    """The photo network for images of ``side`` pixels, first-block width ``width``."""
    pool = max(1, round(side / WORKING_SIDE))
    stem = "whiten(2) relu" + (f" maxpool({pool})" if pool > 1 else "")
    blocks = " ".join(
        f"conv({filters},bias=false) maxpool(2) bn(0.4) relu conv({filters},bias=false) bn(0.4) relu"
        for filters in (width, 4 * width, 4 * width)
    )
    return f"{stem} {blocks} gmp fc({4 * width}) relu scale(0.111)"


def forward_flops(layers: str, image_shape) -> int:
    """Forward FLOPs per image of a layer list (``fruitcnn.model.planned_flops``)."""
    from fruitcnn.model import planned_flops  # Keras on first use (see the module docstring)

    return planned_flops(ArchConfig(layers=parse_layers(layers)), image_shape)


def photo_recipe(
    image_shape,
    classes: int,
    train_images: int,
    budget_s: float | None,
    peak_gflops: float | None,
    bf16_peak_gflops: float | None = None,
    test_curve: bool = False,
) -> Recipe:
    """The recipe for colour photos of ``image_shape`` (see the module docstring).

    Args:
        image_shape: (H, W, C) of the images.
        classes: number of classes.
        train_images: images of the training split.
        budget_s: the time budget (None: the default, ``DEFAULT_BUDGET_S``).
        peak_gflops: this machine's float32 matmul peak (None: this and the bfloat16
            peak are measured now).
        bf16_peak_gflops: its bfloat16 matmul peak (None with ``peak_gflops`` given:
            bfloat16 is not considered).
        test_curve: the test split is evaluated after every epoch anyway (asked for, or
            ``--epochs`` given: no budget to save the time for), so the recipe does not
            choose when.
    """
    side = min(int(image_shape[0]), int(image_shape[1]))
    budget = float(budget_s or DEFAULT_BUDGET_S)
    if peak_gflops is None:
        peak_gflops, bf16_peak_gflops = matmul_peak_gflops(), matmul_peak_gflops(dtype="bfloat16")
    peak, bf16_peak = peak_gflops, bf16_peak_gflops or 0.0
    mixed = bf16_peak >= BF16_ADVANTAGE * peak
    speed = bf16_peak * EFFICIENCY_BF16 if mixed else peak * EFFICIENCY
    affordable = budget * speed * 1e9 / (3 * train_images * TARGET_EPOCHS)
    flops_of = {width: forward_flops(photo_layers(width, side), image_shape) for width in WIDTHS}
    fits = [width for width in WIDTHS if flops_of[width] <= affordable]
    width = max(fits) if fits else WIDTHS[0]
    batch = 512 if train_images >= 25_000 else 256 if train_images >= 8_000 else 128
    # a small training split gets at least MIN_STEPS_PER_EPOCH steps an epoch (a power of two)
    batch = min(batch, 2 ** int(math.log2(max(1, train_images // MIN_STEPS_PER_EPOCH))))
    settings = {
        "arch": photo_layers(width, side),
        "batch_size": batch,
        "optimizer": "sgd",
        "momentum": 0.85,
        "lr": round(LR_PER_1024 * batch / 1024, 6),
        "weight_decay": 0.0089,
        "schedule": "linear",
        "warmup_epochs": round(WARMUP_SHARE * TARGET_EPOCHS, 2),
        "label_smoothing": 0.2,
        "flip": "horizontal",
        "translate": max(1, round(side / 16)),
        "tta": "flip",
        "time_budget": budget,
        **({} if test_curve else {"test_each_epoch": False}),
        "precision": "mixed_bfloat16" if mixed else "float32",
    }
    flops = flops_of[width]
    if mixed:
        arithmetic = (
            f"mixed_bfloat16: this machine's bfloat16 matmuls run at {bf16_peak:.0f} GFLOP/s, "
            f"{bf16_peak / peak:.1f}x its float32 {peak:.0f}"
        )
        speed_words = f"{EFFICIENCY_BF16:g} of its bfloat16 peak"
    else:
        arithmetic = f"float32 ({peak:.0f} GFLOP/s" + (
            f"; bfloat16 {bf16_peak:.0f}, under {BF16_ADVANTAGE:g}x)" if bf16_peak else ")"
        )
        speed_words = f"{EFFICIENCY:g} of this machine's {peak:.0f} GFLOP/s"
    reasons = [f"{side}-px colour photos, {classes} classes, {train_images:,} training images"]
    if not test_curve:
        reasons.append(
            "the test split evaluated once, at the end: every epoch it would take 2/3 of the "
            "evaluations' share of the budget (--test-each-epoch for its curve)"
        )
    reasons += [
        arithmetic,
        f"width {width} ({flops / 1e6:.1f} MFLOP per image): "
        + ("the widest whose" if fits else "the narrowest; not even its")
        + f" {TARGET_EPOCHS} epochs fit into {budget:g} s at {speed_words}",
    ]
    return Recipe("photos", settings, reasons, arch_name=f"photos-w{width}")


def matmul_peak_gflops(size: int = 2048, repeats: int = 4, dtype: str = "float32") -> float:
    """This machine's matmul speed in ``dtype`` (float32 or bfloat16; best of
    ``repeats`` ``size``-square products; 1024-square ones measured less than half of it
    on the 2-core machine). A first product slower than ``SLOW_PRODUCT_S`` (say bfloat16
    on a CPU without bfloat16 instructions) is taken as the answer without repeats."""
    import tensorflow as tf  # on first use (see the module docstring)

    first = tf.cast(tf.random.normal((size, size)), dtype)
    second = tf.cast(tf.random.normal((size, size)), dtype)
    product = tf.function(lambda a, b: tf.matmul(a, b))
    start = time.perf_counter()
    product(first, second).numpy()
    took = time.perf_counter() - start
    if took > SLOW_PRODUCT_S:  # (it includes tracing, so it is the slowest of them)
        return 2 * size**3 / took / 1e9
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        product(first, second).numpy()
        best = max(best, 2 * size**3 / max(time.perf_counter() - start, 1e-9) / 1e9)
    return best


def run_config(
    settings: dict[str, Any],
    *,
    base: RunConfig | None = None,
    dataset=None,
    blocks: dict[str, str] | None = None,
    peak_gflops: float | None = None,
    bf16_peak_gflops: float | None = None,
) -> RunConfig:
    """The run configuration of ``settings`` (train.py's flag names) on ``dataset``,
    with the recipe's choices where the settings leave them out (none when starting
    from ``base``, a saved configuration, or without data). ``RunConfig.recipe`` says
    which recipe chose what."""
    recipe = None
    if base is None and dataset is not None:
        recipe = choose_recipe(settings, dataset, blocks, peak_gflops, bf16_peak_gflops)
    chosen = {**(recipe.settings if recipe else {}), **settings}
    if recipe and "epochs" in settings:  # epochs asked for: no time budget, warm-up a share of them
        chosen.pop("time_budget", None)
        if "warmup_epochs" in recipe.settings and "warmup_epochs" not in settings:
            chosen["warmup_epochs"] = round(WARMUP_SHARE * float(settings["epochs"]), 2)
    shape = dataset.image_shape if dataset is not None else None
    config = config_from_settings(chosen, base=base, image_shape=shape, blocks=blocks)
    if recipe and recipe.settings:
        config.recipe = recipe.text()
    if recipe and recipe.arch_name and "arch" not in settings:
        config.arch = dataclasses.replace(config.arch, name=recipe.arch_name)
    return config


def choose_recipe(
    settings: dict[str, Any], dataset, blocks=None, peak_gflops=None, bf16_peak_gflops=None
) -> Recipe:
    """The recipe for ``dataset`` and the architecture the settings ask for (the peaks:
    as :func:`photo_recipe` takes them)."""
    shape = tuple(int(size) for size in dataset.image_shape)
    photos = dataset.name != "line" and shape[2] == 3
    if photos and "arch" not in settings:
        budget = settings.get("time_budget") if "epochs" not in settings else None
        return photo_recipe(
            shape,
            len(dataset.class_names),
            len(dataset.train),
            budget,
            peak_gflops,
            bf16_peak_gflops,
            test_curve="epochs" in settings or "test_each_epoch" in settings,
        )
    if settings.get("arch"):
        arch = resolve_arch(str(settings["arch"]), blocks)
    else:
        arch = resolve_arch(default_preset(dataset.name, shape))
    return architecture_settings(arch)
