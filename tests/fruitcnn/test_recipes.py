"""The recipe a run gets from its data and architecture (fruitcnn.recipes)."""

from __future__ import annotations

import numpy as np
import pytest

from fruitcnn import recipes
from fruitcnn.config import ArchConfig, parse_layers
from fruitcnn.data import Dataset, Split
from fruitcnn.model import build_model, flops_per_image
from heads.single import single_head_specs

# a fixed machine speed, so the width the recipe picks does not depend on this machine's
PEAK = 150.0


def _dataset(shape, classes=10, images=200, name="photos") -> Dataset:
    def split(count):
        return Split(np.zeros((count, *shape), np.uint8), np.arange(count) % classes)

    return Dataset(name, split(images), split(20), split(20), tuple(f"c{index}" for index in range(classes)))


@pytest.mark.parametrize(
    "shape, pool", [((32, 32, 3), 1), ((64, 64, 3), 2), ((96, 96, 3), 3), ((160, 120, 3), 4)]
)
def test_photos_are_pooled_to_about_32_pixels_after_the_whitening(shape, pool):
    recipe = recipes.photo_recipe(shape, 10, 45_000, 300, PEAK)
    layers = recipe.settings["arch"]
    assert layers.startswith("whiten(2) relu" + (f" maxpool({pool})" if pool > 1 else " conv("))
    assert recipe.settings["translate"] == max(1, round(min(shape[:2]) / 16))
    assert recipe.arch_name.startswith("photos-w") and "colour photos, 10 classes" in recipe.text()


def test_forward_flops_equal_those_of_the_built_model():
    for layers, shape in (
        (recipes.photo_layers(24, 32), (32, 32, 3)),
        (recipes.photo_layers(16, 96), (96, 96, 3)),
        ("conv(8,5) maxpool(2) conv(16) gap fc(7)", (28, 28, 1)),
    ):
        heads = single_head_specs([f"c{index}" for index in range(10)])
        model = build_model(ArchConfig(layers=parse_layers(layers)), input_shape=shape, heads=heads)
        # the model's count also holds the class layer, the recipe's sizing does not need it
        classes = 2 * model.get_layer("class_logits").kernel.shape[0] * 10
        assert recipes.forward_flops(layers, shape) == flops_per_image(model) - classes


def test_the_width_is_the_widest_whose_epochs_fit_the_budget():
    shape, images = (32, 32, 3), 45_000
    widths = [
        int(recipes.photo_recipe(shape, 10, images, budget, PEAK).arch_name.split("-w")[1])
        for budget in (30, 300, 1200, 10_000)
    ]
    assert widths == sorted(widths) and widths[0] == recipes.WIDTHS[0] and widths[-1] == recipes.WIDTHS[-1]
    for budget, width in zip((300, 1200), widths[1:3]):
        affordable = budget * PEAK * 1e9 * recipes.EFFICIENCY / (3 * images * recipes.TARGET_EPOCHS)
        fits = recipes.forward_flops(recipes.photo_layers(width, 32), shape) <= affordable
        assert fits or width == recipes.WIDTHS[0]  # the narrowest when none fits
        if width != recipes.WIDTHS[-1]:  # the next width would not fit (brute force over WIDTHS)
            wider = recipes.WIDTHS[recipes.WIDTHS.index(width) + 1]
            assert recipes.forward_flops(recipes.photo_layers(wider, 32), shape) > affordable


def test_mixed_precision_where_bfloat16_is_at_least_twice_as_fast():
    shape, images = (32, 32, 3), 45_000
    chosen = {
        bf16: recipes.photo_recipe(shape, 10, images, 300, PEAK, bf16)
        for bf16 in (None, 0.5 * PEAK, 1.9 * PEAK, recipes.BF16_ADVANTAGE * PEAK, 4.5 * PEAK)
    }
    precisions = [recipe.settings["precision"] for recipe in chosen.values()]
    assert precisions == ["float32", "float32", "float32", "mixed_bfloat16", "mixed_bfloat16"]
    assert "mixed_bfloat16: this machine's bfloat16 matmuls run at 675 GFLOP/s" in chosen[4.5 * PEAK].text()
    assert "float32 (150 GFLOP/s; bfloat16 285, under 2x)" in chosen[1.9 * PEAK].text()
    # in mixed precision the network is sized at EFFICIENCY_BF16 of the bfloat16 peak
    fast = chosen[4.5 * PEAK]
    width = int(fast.arch_name.split("-w")[1])
    affordable = 300 * 4.5 * PEAK * 1e9 * recipes.EFFICIENCY_BF16 / (3 * images * recipes.TARGET_EPOCHS)
    assert recipes.forward_flops(fast.settings["arch"], shape) <= affordable
    wider = [size for size in recipes.WIDTHS if size > width]
    assert not wider or recipes.forward_flops(recipes.photo_layers(wider[0], 32), shape) > affordable
    config = recipes.run_config({}, dataset=_dataset(shape), peak_gflops=PEAK, bf16_peak_gflops=4.5 * PEAK)
    assert config.train.precision == "mixed_bfloat16"
    own = recipes.run_config(
        {"precision": "float32"}, dataset=_dataset(shape), peak_gflops=PEAK, bf16_peak_gflops=4.5 * PEAK
    )
    assert own.train.precision == "float32"  # the flag wins


def test_the_matmul_peak_is_measured_in_either_precision():
    for dtype in ("float32", "bfloat16"):
        assert recipes.matmul_peak_gflops(256, 1, dtype=dtype) > 0


def test_batch_and_rate_follow_the_training_images():
    settings = {
        images: recipes.photo_recipe((32, 32, 3), 10, images, 300, PEAK).settings
        for images in (1_000, 8_000, 45_000)
    }
    assert [settings[images]["batch_size"] for images in (1_000, 8_000, 45_000)] == [128, 256, 512]
    # a small split keeps at least MIN_STEPS_PER_EPOCH steps an epoch (found with 108 photos)
    small = {
        images: recipes.photo_recipe((72, 72, 3), 3, images, 20, PEAK).settings for images in (3, 108, 300)
    }
    assert [small[images]["batch_size"] for images in (3, 108, 300)] == [1, 16, 64]
    for chosen in settings.values():
        assert chosen["lr"] == pytest.approx(recipes.LR_PER_1024 * chosen["batch_size"] / 1024)


def test_colour_photos_get_the_recipe_and_every_flag_wins():
    data = _dataset((64, 64, 3))
    config = recipes.run_config({}, dataset=data, peak_gflops=PEAK)
    assert config.arch.name.startswith("photos-w") and config.train.optimizer == "sgd"
    assert config.train.time_budget == recipes.DEFAULT_BUDGET_S and config.augment.flip == "horizontal"
    assert config.recipe.startswith("recipe photos:")
    given = recipes.run_config(
        {"epochs": 4, "lr": 0.01, "optimizer": "adam", "flip": "none"}, dataset=data, peak_gflops=PEAK
    )
    # on its budget the test split is evaluated once, at the end; the flag brings the curve back
    assert not config.train.test_each_epoch and "evaluated once, at the end" in config.recipe
    curve = recipes.run_config({"test_each_epoch": True}, dataset=data, peak_gflops=PEAK)
    assert curve.train.test_each_epoch and curve.train.time_budget == recipes.DEFAULT_BUDGET_S
    assert "evaluated once" not in curve.recipe  # the recipe says only what it chose
    assert given.train.time_budget == 0 and given.train.epochs == 4  # epochs asked for: no budget
    assert given.train.test_each_epoch and "evaluated once" not in given.recipe  # nothing to save
    assert given.train.warmup_epochs == pytest.approx(recipes.WARMUP_SHARE * 4, abs=0.01)
    assert (given.train.learning_rate, given.train.optimizer, given.augment.flip) == (0.01, "adam", "none")
    budget = recipes.run_config({"time_budget": 1200}, dataset=data, peak_gflops=PEAK)
    assert budget.train.time_budget == 1200 and "into 1200 s" in budget.recipe


@pytest.mark.parametrize(
    "shape, name", [((28, 28, 1), "mnist"), ((64, 64, 3), "line"), ((32, 32, 1), "photos")]
)
def test_line_and_grey_images_keep_their_presets(shape, name):
    config = recipes.run_config({}, dataset=_dataset(shape, name=name), peak_gflops=PEAK)
    assert not config.arch.name.startswith("photos") and config.train.time_budget == 0


def test_an_architecture_without_batch_norm_gets_adam_at_a_low_rate():
    data = _dataset((96, 96, 3))
    deep = recipes.run_config({"arch": "ece4179-deep"}, dataset=data, peak_gflops=PEAK)
    assert (deep.train.optimizer, deep.train.learning_rate) == ("adam", recipes.RATE_WITHOUT_BN)
    assert "no batch norm" in deep.recipe and deep.train.time_budget == 0
    with_bn = recipes.run_config({"arch": "conv(8) bn relu gap"}, dataset=data, peak_gflops=PEAK)
    assert with_bn.recipe == "" and with_bn.train.learning_rate != recipes.RATE_WITHOUT_BN
    own = recipes.run_config({"arch": "ece4179-deep", "lr": 0.01}, dataset=data, peak_gflops=PEAK)
    assert own.train.learning_rate == 0.01


def test_a_saved_configuration_gets_no_recipe():
    data = _dataset((32, 32, 3))
    first = recipes.run_config({}, dataset=data, peak_gflops=PEAK)
    again = recipes.run_config({"lr": 0.3}, base=first, dataset=data, peak_gflops=PEAK)
    assert again.arch == first.arch and again.train.learning_rate == 0.3
