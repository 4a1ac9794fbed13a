"""Classification heads: what sits on the shared feature extractor.

A head is described by a :class:`HeadSpec` (its output name, kind and class names).
:func:`build_heads` turns specs into Keras layers on a feature vector; every head is a
``Dense`` layer named ``<head>_logits`` followed by a separate activation layer named
``<head>``, so explanations can take gradients of the logits before the squashing.

* :func:`single_head_specs`: one softmax head named ``class``.
* :func:`line_attribute_specs`: the four heads of the line dataset: ``length``,
  ``width``, ``colour`` (one sigmoid unit each) and ``angle`` (12-way softmax).
"""

from heads.base import (
    AGGREGATE,
    LOGITS_SUFFIX,
    AggregateAccuracy,
    HeadSpec,
    MacroF1,
    build_heads,
    compile_arguments,
    confusion_metrics,
    head_targets,
)
from heads.multi import line_attribute_specs
from heads.single import SINGLE_HEAD, single_head_specs

__all__ = [
    "AGGREGATE",
    "LOGITS_SUFFIX",
    "AggregateAccuracy",
    "HeadSpec",
    "MacroF1",
    "SINGLE_HEAD",
    "build_heads",
    "compile_arguments",
    "confusion_metrics",
    "head_targets",
    "line_attribute_specs",
    "single_head_specs",
]
