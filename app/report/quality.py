"""The report's "Explanation quality" section: how far the explanations can be trusted,
from ``app.report.build.measure_explanations`` (``visualize.quality``)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from app.report.pages import Figure, Section, Table, Text
from app.report.sections import FIGURE_DPI, csv_bytes, file_suffix, head_title, optional_format
from fruitcnn import plots
from visualize.quality import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    POINTING_GOAL,
    POINTING_METHODS,
    POINTING_TOLERANCE,
    RANDOM_MODELS,
    RELIANCE_MARGIN,
    SANITY_LIMIT,
    failed_checks,
)


def quality_section(quality: dict, files: dict[str, bytes]) -> Section:
    """How far the explanations can be trusted (``app.report.build.measure_explanations``):
    per method and head the pointing game and mask mass (when the data has object
    masks), the deletion and insertion areas against a random order, and the rank
    correlation with a fully randomised model; the mean curves as a figure."""
    if "skipped" in quality:
        return Section(
            "Explanation quality", "quality", [Text(f"Not measured: {quality['skipped']}", "warning")]
        )
    settings = quality["settings"]
    multi = len(quality["heads"]) > 1
    described = f"occlusion with a {settings['patch']}-pixel square, the mean colour as fill"
    if "layer" in settings:
        described += f"; Grad-CAM, Grad-CAM++ and LayerCAM of {settings['layer']}"
    if "integrated_gradients" in settings:
        described += f"; Integrated Gradients in {settings['integrated_gradients']}"
    if "rise" in settings:
        described += f"; RISE with {settings['rise']}"
    blocks: list[Any] = [
        Text(
            (f"Measured in {quality['seconds']:.0f} s. " if "seconds" in quality else "")
            + f"{quality['images']} test images (a seeded choice), their true class explained ({described}; "
            f"SmoothGrad of {settings['smoothgrad']} noisy copies). Deletion / insertion: the area under the "
            "class probability as the pixels a map ranks first are replaced by the training mean colour / "
            "revealed on it (Petsiuk et al., 2018): a faithful map's deletion area lies below the random "
            "order's and its insertion area above. Sanity check (Adebayo et al., 2018): the Spearman rank "
            "correlation between the maps of this model and of copies whose weights were all re-initialised "
            f"({RANDOM_MODELS} draws, averaged); "
            f"at {SANITY_LIMIT} or more the map shows the image more than the model."
            + (
                f" Pointing: the share of maps whose maximum lies on the object (within {POINTING_TOLERANCE} "
                f"pixel; the goal, {POINTING_GOAL:.0%}, is checked for {', '.join(POINTING_METHODS)}); mask "
                "mass: the share of a map's positive mass on the object."
                if quality["masks"]
                else ""
            )
        )
    ]
    for head, found in quality["heads"].items():
        intervals = found.intervals()
        summary = found.summary().join(intervals[["images"]]).reset_index()
        summary["checks failed"] = [
            "; ".join(failed_checks(row["method"], row, masks=quality["masks"]))
            for _, row in summary.iterrows()
        ]
        suffix = file_suffix(head, multi)
        files[f"quality{suffix}.csv"] = csv_bytes(summary.join(intervals.drop(columns="images"), on="method"))
        figure = plots.curves_figure(
            found.curves, title="deletion and insertion" + (f", head {head}" if multi else "")
        )
        png = plots.png_bytes(figure, dpi=FIGURE_DPI)
        files[f"quality-curves{suffix}.png"] = png
        if multi:
            blocks.append(head_title(head))
        if found.randomization_note:
            blocks.append(Text(f"No randomisation check: {found.randomization_note}", "warning"))
        blocks.append(
            Table(
                summary.assign(failing=summary["checks failed"].ne("")),
                "mean per method over the images (rows with a failed check are marked)",
                {"pointing": optional_format("{:.0%}")},
                bars=[column for column in ("pointing", "mask_mass") if column in summary],
                file=f"quality{suffix}.csv",
                highlight="failing",
            )
        )
        blocks.append(
            Table(
                _interval_text(summary, intervals),
                f"{CONFIDENCE:.0%} bootstrap intervals of the means above (the images resampled "
                f"{BOOTSTRAP_RESAMPLES} times; the CSV has them as numbers)",
            )
        )
        blocks.append(
            Figure(
                f"quality-curves{suffix}.png",
                png,
                "Mean deletion and insertion curves per method; dashed: random pixel orders.",
            )
        )
        if head in quality.get("regions", {}):
            blocks += _regions_blocks(quality["regions"][head], suffix, files)
    return Section("Explanation quality", "quality", blocks)


def _regions_blocks(found, suffix: str, files: dict[str, bytes]) -> list:
    """What the decisions rest on (``visualize.quality.region_check``): the verdict in
    words, then per method the shares of importance on each region."""
    summary = found.summary()
    summary.index.name = "measured by"
    files[f"regions{suffix}.csv"] = csv_bytes(summary.reset_index())
    checked = (
        "the cued copies of the test images (the cue as in training)" if found.cue else "the images above"
    )
    others = [region for region in found.regions if region != "object"]
    return [
        Text(
            "What the decisions rest on: " + " ".join(found.verdict()), "warning" if found.relies else "text"
        ),
        Table(
            summary.reset_index(),
            f"On {checked}: row 'area', each region's share of the image; row 'removal', the class "
            f"probability removing the region costs (object and rest filled with the training mean colour"
            + (", the cue replaced by the clean image" if found.cue else "")
            + (
                "; column other_cue: the cost of another class's cue in its place, the median over the "
                "other classes' cues"
                if found.substituted
                else ""
            )
            + f"), with relies_on_{'/'.join(others)} the share of images where removing it"
            + (
                " (the cue: removing or replacing it, where its own cue helps against both)"
                if found.substituted
                else ""
            )
            + f" costs at least {RELIANCE_MARGIN:g} and more_on_ the share where that is also more than "
            "hiding the object costs; "
            "the other rows, each method's share of "
            "positive importance per region and the share of images whose map puts more on "
            f"{' / '.join(others)} than on the object.",
            {column: "{:.0%}" for column in summary.columns if column.startswith(("more_on_", "relies_on_"))},
            file=f"regions{suffix}.csv",
        ),
    ]


def _interval_text(summary, intervals):
    """The intervals as ``[low, high]`` text per method and measure (pointing in percent)."""
    rows = []
    for _, row in summary.iterrows():
        text = {"method": row["method"], "images": int(row["images"])}
        for column in summary.columns:
            if f"{column}_low" in intervals:
                low, high = intervals.loc[row["method"], [f"{column}_low", f"{column}_high"]]
                text[column] = (
                    f"[{low:.0%}, {high:.0%}]" if column == "pointing" else f"[{low:.3f}, {high:.3f}]"
                )
        rows.append(text)
    return pd.DataFrame(rows)
