"""Problems found while scanning a dataset, collected and reported together.

A scan never stops at the first bad file: readers record every problem in a
:class:`Problems` and call :meth:`Problems.raise_if_any` once they are done, so one
run shows the user everything to fix. Two severities:

* **errors** make the data unusable as it is (an empty class folder, a class in Test
  that is missing from Training, an unsafe or unreadable archive ...);
* **skips** are single files left out (a corrupt JPEG, a text file among the images).
  They are counted and listed in the summary and in ``data.json`` of the run, never
  dropped silently; with ``strict`` they are errors too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

# How many names of one kind of problem an error message lists before summarising.
SHOWN_PER_KIND = 20


class DatasetError(ValueError):
    """The data cannot be used as given; the message lists every problem found."""


@dataclass
class Problems:
    """Errors and skipped files of one scan, grouped by kind.

    Attributes:
        source: what was scanned (a path or dataset name), for the messages.
        strict: treat skipped files as errors.
        errors: kind -> list of (where, detail).
        skipped: kind -> list of (where, detail).
        fixes: kind -> how to fix that kind of problem.
    """

    source: str
    strict: bool = False
    errors: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))
    skipped: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))
    fixes: dict[str, str] = field(default_factory=dict)

    def error(self, kind: str, where: str, detail: str = "", fix: str = "") -> None:
        """Record a problem that makes the data unusable."""
        self.errors[kind].append((where, detail))
        if fix:
            self.fixes.setdefault(kind, fix)

    def skip(self, kind: str, where: str, detail: str = "", fix: str = "") -> None:
        """Record a file that is left out (an error when ``strict``)."""
        self.skipped[kind].append((where, detail))
        if fix:
            self.fixes.setdefault(kind, fix)

    @property
    def skipped_count(self) -> int:
        return sum(len(items) for items in self.skipped.values())

    def skipped_list(self) -> list[dict[str, str]]:
        """Every skipped file as ``{"file", "reason", "detail"}``, for data.json."""
        return [
            {"file": where, "reason": kind, "detail": detail}
            for kind, items in self.skipped.items()
            for where, detail in items
        ]

    def raise_if_any(self) -> None:
        """Raise one :class:`DatasetError` listing all errors (and skips when strict)."""
        blocking = dict(self.errors)
        if self.strict:
            for kind, items in self.skipped.items():
                blocking.setdefault(kind, []).extend(items)
        if not any(blocking.values()):
            return
        count = sum(len(items) for items in blocking.values())
        lines = [f"{self.source}: {count} problem{'s' if count != 1 else ''} found, nothing was trained:"]
        for kind, items in blocking.items():
            if not items:
                continue
            lines.append(f"  {kind} ({len(items)}):")
            lines.extend(_describe(items))
            if kind in self.fixes:
                lines.append(f"    fix: {self.fixes[kind]}")
        if self.strict and self.skipped_count:
            lines.append("  (--strict is on: files that would be skipped count as errors)")
        elif self.skipped_count:  # named now, not only once the errors are fixed
            lines.append(
                f"  besides, {self.skipped_count} file(s) would be skipped (--strict makes them errors):"
            )
            for kind, items in self.skipped.items():
                lines.append(f"  {kind} ({len(items)}):")
                lines.extend(_describe(items))
        raise DatasetError("\n".join(lines))

    def summary(self) -> list[str]:
        """Lines that report the skipped files (empty when none were skipped)."""
        if not self.skipped_count:
            return []
        lines = [f"skipped {self.skipped_count} file(s) of {self.source} (--strict makes this an error):"]
        for kind, items in self.skipped.items():
            lines.append(f"  {kind} ({len(items)}):")
            lines.extend(_describe(items))
        return lines


def _describe(items: list[tuple[str, str]]) -> list[str]:
    lines = [f"    {where}" + (f": {detail}" if detail else "") for where, detail in items[:SHOWN_PER_KIND]]
    if len(items) > SHOWN_PER_KIND:
        lines.append(f"    ... and {len(items) - SHOWN_PER_KIND} more")
    return lines
