"""Parameter studies: a base run plus a grid or list of variations, as one table.

A study file (TOML, or the same structure as JSON) declares::

    name = "fruits-dropout-bn"            # folder name (default: the file's stem)
    description = "what the study asks"

    [base]                                # settings of every trial: train.py's flag
    dataset = "line"                      # names with '_' for '-', plus arch and
    epochs = 3                            # multihead
    arch = "conv(32) {bn} relu maxpool(2) conv(64) {bn} relu gap"

    [blocks]                              # optional: blocks the arch text may call;
    stage = "conv({filters}) relu maxpool(2)"   # their {names} are block parameters

    [grid]                                # every combination, first key slowest
    dropout = [0.0, 0.5]                  # a setting: its values
    bn = { with = "bn", without = "" }    # labelled values: the table shows the labels

    [[variants]]                          # optional: a list of named alternatives,
    label = "cs671"                       # each a set of settings; crossed with
    arch = "cs671-part1"                  # the grid when both are given

An entry whose name is a setting sets it; any other name is a template variable
that string settings use as ``{name}`` (the architecture above). [base] gives every
trial's settings and variables, a variant or grid value overrides them, and
``N*[layers]`` with a variable N varies the number of layers (``0*`` leaves them out).
Every trial is one ordinary ``fruitcnn.training.train`` run; ``app.study.tuning``
runs them through Keras Tuner. This module is plain Python: reading study files,
planning the trials and writing the result tables.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fruitcnn import runs
from fruitcnn.config import SETTING_EXTRAS, SETTING_FIELDS, config_from_settings, setting_hint
from fruitcnn.config.language import PLACEHOLDER

# Files of a study folder.
STUDY_SPEC = "study.json"  # the study as planned (to notice a changed study file)
STUDY_CSV = "study.csv"
STUDY_MD = "study.md"
STUDY_PLOT = "study.png"
TUNER_PROJECT = "tuner"  # Keras Tuner's own state: oracle.json, trial_*/trial.json
RUNS_DIR = "runs"  # one ordinary run folder per trial (also TensorBoard's logdir)
DEFAULT_ROOT = runs.DEFAULT_ROOT / "studies"
# The parameter that a [[variants]] list becomes.
VARIANT = "variant"
_TOP_LEVEL = ("name", "description", "base", "blocks", "grid", "variants")
# Template variables may expand to text holding further variables, this deep.
_MAX_TEMPLATE_DEPTH = 8
# A study plans at most this many trials (each a training run: 1,000 is weeks on a CPU),
# and a setting filled in from template variables is at most this long.
MAX_TRIALS = 1000
MAX_SETTING_CHARS = 100_000
# Hex digits of a plan's fingerprint.
_HASH_CHARS = 16
# Longest trial folder name (the trial number and its values, shortened beyond this).
_FOLDER_CHARS = 80
# Statuses of a planned trial in the tables.
DONE, FAILED, RUNNING, PENDING = "done", "failed", "running", "pending"
# Which trials get an evaluation report (study.py --reports).
REPORT_CHOICES = ("best", "all", "none")
# Result columns of study.csv besides the varied parameters (no parameter may take these names).
RESULT_COLUMNS = (
    "trial",
    "parameters",
    "mflop_per_image",
    "best_val_accuracy",
    "best_val_loss",
    "test_accuracy",
    "best_epoch",
    "epochs_trained",
    "train_s",
    "wall_s",
    "status",
    "run",
    "message",
)
# The search-space entry holding the plan's fingerprint (app.study.tuning), so a worker
# with another study file is refused; no parameter may take its name.
PLAN_ENTRY = "study_plan"
# study.csv units: FLOPs per image in millions, seconds to this many decimals.
MFLOP, FLOP_DIGITS, SECOND_DIGITS = 1e-6, 2, 1
# study.md shows validation losses to this many significant digits (they reach 1e-4 on easy data).
LOSS_DIGITS = 3


@dataclass(frozen=True)
class Parameter:
    """One varied parameter: its name and its values, each with the label the table shows."""

    name: str
    labels: tuple[str, ...]
    values: tuple[Any, ...]

    def value(self, label: str) -> Any:
        """The value behind a label (for a [[variants]] entry: its settings)."""
        return self.values[self.labels.index(label)]


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of the plan: its number (from 1, in plan order), the label of each
    parameter and its settings."""

    number: int
    labels: dict[str, str]
    settings: dict[str, Any]


@dataclass
class Study:
    """A parsed study file (see the module docstring)."""

    name: str
    description: str
    base: dict[str, Any]
    blocks: dict[str, str]
    parameters: list[Parameter]
    source: Path | None = None
    trials: list[PlannedTrial] = field(default_factory=list)

    def spec(self) -> dict[str, Any]:
        """What the trials depend on, JSON-ready (compared when a study is re-run)."""
        return {
            "name": self.name,
            "blocks": self.blocks,
            "trials": [{"labels": trial.labels, "settings": trial.settings} for trial in self.trials],
        }

    def plan_hash(self) -> str:
        """A short fingerprint of :meth:`spec` (machines of one distributed study compare it)."""
        text = json.dumps(self.spec(), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_CHARS]

    def trial_for(self, labels: dict[str, str]) -> PlannedTrial:
        """The planned trial with these labels."""
        for trial in self.trials:
            if trial.labels == labels:
                return trial
        raise ValueError(f"no trial of study {self.name!r} has the values {labels}.")


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> Study:
    """Read and plan a study file (``.toml`` or ``.json``).

    Args:
        path: the study file.
        overrides: base entries to replace (``study.py --dataset PATH``, ``--set key=value``):
            the same study on other data or with another setting for every trial.

    Raises:
        ValueError: naming the entry that is wrong and what it should be.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"study file {path} does not exist; example study files are in studies/.")
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except UnicodeDecodeError as error:
        raise ValueError(f"study file {path} is not UTF-8 text ({error}); save it as UTF-8.") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"study file {path} is not valid {kind}: {error}.") from error
    except RecursionError:
        raise ValueError(f"study file {path} nests its {kind} too deeply to be a study.") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"study file {path} must hold a table of entries (name, base, grid ...), "
            f"not {type(data).__name__}."
        )
    if overrides:
        data = _overridden(data, overrides, path)
    return study_from_dict(data, default_name=path.stem, source=path)


def _overridden(data: dict[str, Any], overrides: dict[str, Any], path: Path) -> dict[str, Any]:
    """The study's entries with ``overrides`` replacing (or adding) base entries; a name
    the grid or a variant varies cannot be overridden for every trial."""
    varied = set(_table(data.get("grid", {}), "[grid]"))
    variants = data.get("variants", [])
    if isinstance(variants, list):
        varied |= {str(key).replace("-", "_") for item in variants if isinstance(item, dict) for key in item}
    overrides = {str(key).replace("-", "_"): value for key, value in overrides.items()}
    clash = sorted(set(overrides) & varied)
    if clash:
        raise ValueError(
            f"{', '.join(clash)} is varied by the study ({path}'s [grid] or [[variants]]), so it cannot be "
            "set for every trial; edit a copy of the study file instead."
        )
    return {**data, "base": {**_table(data.get("base", {}), "[base]"), **overrides}}


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` of ``study.py --set``: the value read as in a study file (a number,
    true/false, a "string"), else as plain text."""
    key, equals, value = str(text).partition("=")
    if not equals or not key.strip():
        raise ValueError(f"--set {text!r}: expected key=value, e.g. --set epochs=5 or --set lr=0.01.")
    try:
        parsed = tomllib.loads(f"value = {value.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip().replace("-", "_"), parsed


def override_suffix(overrides: dict[str, Any]) -> str:
    """A folder-name suffix for a study run with ``overrides`` (its results differ)."""
    parts = []
    for key, value in overrides.items():
        text = (
            str(value).replace("\\", "/").rstrip("/").split("/")[-1] if key == "dataset" else f"{key}{value}"
        )
        parts.append(re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._"))
    return "-".join(part for part in parts if part)[:_FOLDER_CHARS] or "custom"


def missing_data(study: Study) -> list[str]:
    """The datasets the study's trials name that do not exist here (paths only: ``line``
    and ``tfds:`` names are not files)."""
    named = {str(trial.settings.get("dataset", "line")) for trial in study.trials}
    return sorted(
        name
        for name in named
        if name != "line" and not name.startswith("tfds:") and not Path(name).expanduser().exists()
    )


def study_from_dict(
    data: dict[str, Any], *, default_name: str = "study", source: Path | None = None
) -> Study:
    """A :class:`Study` from the parsed file (see the module docstring)."""
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise ValueError(
            f"unknown study entr{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; a study has "
            f"{', '.join(_TOP_LEVEL)} (settings belong under [base], varied ones under [grid])."
        )
    name = str(data.get("name", default_name))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        where = "" if "name" in data else f' (taken from the file name; add name = "{_safe_name(name)}")'
        raise ValueError(
            f"study name {name!r} must be letters, digits, '.', '_' or '-' (it names a folder){where}."
        )
    base = _settings_table(data.get("base", {}), "[base]")
    blocks = data.get("blocks", {})
    if not isinstance(blocks, dict) or not all(isinstance(body, str) for body in blocks.values()):
        raise ValueError(f"[blocks] must map block names to layer text, got {blocks!r}.")
    parameters = [_parameter(key, values) for key, values in _table(data.get("grid", {}), "[grid]").items()]
    variants = data.get("variants", [])
    if variants:
        parameters.insert(0, _variants(variants))
    if not parameters:
        raise ValueError("the study varies nothing: give a [grid] of values or a list of [[variants]].")
    _check_names(parameters)
    study = Study(name, str(data.get("description", "")), base, dict(blocks), parameters, source)
    study.trials = _plan(study)
    for trial in study.trials:
        if trial.settings.get("strategy") == "multiworker":
            raise ValueError(
                "strategy = multiworker makes every trial one run over several workers started together; "
                "a study instead spreads its trials over machines (study.py --oracle HOST:PORT "
                "--tuner-id ...). "
                "Use strategy = default or mirrored in a study."
            )
    return study


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._") or "study"


def _check_names(parameters: Sequence[Parameter]) -> None:
    """No parameter may shadow a result column, and no name may be set twice (by a
    variant and by the grid), which would leave one of them without effect."""
    for parameter in parameters:
        if parameter.name in (*RESULT_COLUMNS, PLAN_ENTRY):
            raise ValueError(
                f"[grid] {parameter.name}: a name study.csv or the tuner uses itself; call the parameter "
                "otherwise (or, for a setting, use its train.py name)."
            )
    if parameters and parameters[0].name == VARIANT:
        in_variants = set(_names(parameters[0]))
        twice = sorted(in_variants & {parameter.name for parameter in parameters[1:]})
        if twice:
            raise ValueError(
                f"{', '.join(twice)} is set by [[variants]] and varied by [grid]; the grid would override "
                "the variants' values. Set it in one place only."
            )


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a table of name = value entries, got {value!r}.")
    table: dict[str, Any] = {}
    for key, item in value.items():
        name = str(key).replace("-", "_")
        if name in table:
            raise ValueError(f"{where} gives {name} twice (as {name} and with '-'); keep one.")
        table[name] = item
    return table


def _settings_table(value: Any, where: str) -> dict[str, Any]:
    table = _table(value, where)
    for key, item in table.items():
        if isinstance(item, (dict, list)):
            raise ValueError(f"{where} {key} = {item!r}: takes one value; put varied values under [grid].")
    return table


def _parameter(name: str, values: Any) -> Parameter:
    if name == VARIANT:
        raise ValueError(f"'{VARIANT}' is the name of the [[variants]] list; call the grid entry otherwise.")
    if isinstance(values, dict):
        labels, items = tuple(str(label) for label in values), tuple(values.values())
    elif isinstance(values, list):
        labels, items = tuple(_label(value) for value in values), tuple(values)
    else:
        raise ValueError(
            f"[grid] {name} = {values!r}: give a list of values, e.g. {name} = [1, 2], or labelled values, "
            f"e.g. {name} = {{ small = 1, large = 2 }}."
        )
    if not items:
        raise ValueError(f"[grid] {name} has no values; give at least one.")
    if any(isinstance(item, (dict, list)) for item in items):
        raise ValueError(f"[grid] {name}: each value must be a number, text or true/false, got {values!r}.")
    if len(set(labels)) != len(labels):
        raise ValueError(f"[grid] {name} lists a value twice: {list(labels)}.")
    return Parameter(name, labels, items)


def _variants(variants: Any) -> Parameter:
    if not isinstance(variants, list) or not all(isinstance(item, dict) for item in variants):
        raise ValueError("[[variants]] must be a list of tables, each with a label and its settings.")
    labels, values = [], []
    for number, variant in enumerate(variants, start=1):
        settings = _settings_table(variant, f"[[variants]] #{number}")
        labels.append(str(settings.pop("label", f"variant{number}")))
        values.append(settings)
    if len(set(labels)) != len(labels):
        raise ValueError(f"[[variants]] labels must differ, got {labels}.")
    return Parameter(VARIANT, tuple(labels), tuple(values))


def _label(value: Any) -> str:
    """How a value is shown (and keyed): true/false, integers, shortest float text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.1f}" if math.isfinite(value) and value.is_integer() else repr(value)
    return str(value)


def _plan(study: Study) -> list[PlannedTrial]:
    """Every combination, in file order (the first parameter changes slowest)."""
    count = math.prod(len(parameter.labels) for parameter in study.parameters)
    if count > MAX_TRIALS:
        sizes = " x ".join(str(len(parameter.labels)) for parameter in study.parameters)
        raise ValueError(
            f"the study plans {sizes} = {count:,} trials, more than {MAX_TRIALS:,}; split it into smaller "
            "studies or vary fewer settings at once."
        )
    settings_names = {*SETTING_FIELDS, *SETTING_EXTRAS}
    variables: set[str] = set()
    trials = []
    for number, combination in enumerate(
        itertools.product(*(parameter.labels for parameter in study.parameters)), start=1
    ):
        labels = dict(zip((parameter.name for parameter in study.parameters), combination))
        settings = {key: value for key, value in study.base.items() if key in settings_names}
        template: dict[str, Any] = dict(study.base)  # non-settings in [base]: variable defaults
        for parameter in study.parameters:
            value = parameter.value(labels[parameter.name])
            entries = value if parameter.name == VARIANT else {parameter.name: value}
            for key, item in entries.items():
                template[key] = item
                if key in settings_names:
                    settings[key] = item
        settings, used = _fill(settings, template)
        variables |= used
        trials.append(PlannedTrial(number, labels, settings))
    varied = {name for parameter in study.parameters for name in _names(parameter)} | set(study.base)
    unused = sorted(varied - settings_names - variables)
    if unused:
        hint = setting_hint(unused[0])
        raise ValueError(
            f"study entr{'y' if len(unused) == 1 else 'ies'} {', '.join(unused)} neither name a setting nor "
            f"appear as {{{unused[0]}}} in a setting such as arch; {hint}settings are train.py's flag names: "
            f"{', '.join(sorted(settings_names))}."
        )
    return trials


def _names(parameter: Parameter) -> list[str]:
    if parameter.name != VARIANT:
        return [parameter.name]
    return sorted({key for settings in parameter.values for key in settings})


def _fill(settings: dict[str, Any], template: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Settings with their ``{variables}`` replaced; also the variables used."""
    filled, used = {}, set()
    for key, value in settings.items():
        depth = 0
        while isinstance(value, str) and PLACEHOLDER.search(value):
            if depth == _MAX_TEMPLATE_DEPTH:
                raise ValueError(
                    f"setting {key}: template variables nest deeper than {_MAX_TEMPLATE_DEPTH} levels "
                    "(does a value contain its own {name}?)."
                )
            missing = sorted({name for name in PLACEHOLDER.findall(value) if name not in template})
            if missing:
                raise ValueError(
                    f"setting {key} = {value!r} uses {{{missing[0]}}}, which no [grid] entry or variant "
                    f"gives; add {missing[0]} = [...] under [grid] (or write the value in)."
                )
            used |= set(PLACEHOLDER.findall(value))
            value = PLACEHOLDER.sub(lambda match: setting_text(template[match.group(1)]), value)
            if len(value) > MAX_SETTING_CHARS:
                raise ValueError(
                    f"setting {key}: its template variables expand to more than {MAX_SETTING_CHARS:,} "
                    "characters (does a value repeat another many times?)."
                )
            depth += 1
        filled[key] = value
    return filled, used


def setting_text(value: Any) -> str:
    """How a setting's value reads in the tables (its label for non-text values)."""
    return _label(value) if not isinstance(value, str) else value


def check_settings(study: Study) -> None:
    """Every trial's settings make a valid run configuration (the data is not read).

    Raises:
        ValueError: naming the first trial whose settings are wrong.
    """
    for trial in study.trials:
        try:
            config_from_settings(trial.settings, blocks=study.blocks)
        except ValueError as error:
            raise ValueError(f"trial {trial_title(trial)}: {error}") from error


def check_folder(study: Study, folder: Path) -> bool:
    """Whether ``folder`` already holds this study (False: it holds none).

    Raises:
        ValueError: the folder holds a study with other trials.
    """
    spec_file = Path(folder) / STUDY_SPEC
    if not spec_file.is_file():
        return False
    saved = runs.read_json(spec_file)
    if saved != study.spec():
        difference = _first_difference(saved, study.spec())
        raise ValueError(
            f"{folder} holds study {saved.get('name')!r} with other trials ({difference}); run its own "
            "study file again to continue it, add --restart to discard its trials, or give --out NEW."
        )
    return True


def _first_difference(saved: dict, planned: dict) -> str:
    if saved.get("blocks") != planned.get("blocks"):
        return "its [blocks] differ"
    before, now = saved.get("trials", []), planned.get("trials", [])
    if len(before) != len(now):
        return f"{len(before)} trials before, {len(now)} now"
    for number, (old, new) in enumerate(zip(before, now), start=1):
        if old != new:
            return (
                f"trial {number} was {old['labels']} {old['settings']}, now {new['labels']} {new['settings']}"
            )
    return "its name differs"


def trial_title(trial: PlannedTrial) -> str:
    """``3 (filters=32, pool=gap)``: how messages name a trial."""
    return f"{trial.number} ({', '.join(f'{name}={label}' for name, label in trial.labels.items())})"


def trial_folder(study: Study, trial: PlannedTrial) -> str:
    """The run folder of a trial under ``runs/``: its number and its values, file-safe
    (``03-filters=32-pool=gap``). Every attempt at a trial uses the same folder."""
    width = len(str(len(study.trials)))
    parts = [f"{trial.number:0{width}d}"] + [f"{name}={label}" for name, label in trial.labels.items()]
    name = re.sub(r"[^A-Za-z0-9._=+-]+", "_", "-".join(parts))
    return name[:_FOLDER_CHARS].rstrip("_-")
