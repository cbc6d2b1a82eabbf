"""The small constraint language of gpubp.params: each constraint says whether it takes a value
(``accepts``), what the value becomes (``normalize``), its allowed values in words (``describe``,
in scikit-learn's wording, e.g. "an int in the range [1, inf)") and what a command-line text
stands for (``from_text``, or NOT_READ when the text is not of its kind). A :class:`Setting`
is one row of the table: constraints of which any one may accept a value, and a description.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .atomic_file import unwritable

NOT_READ = object()  # from_text: the text does not read as a value of this constraint


@dataclass(frozen=True)
class Interval:
    """Numbers of a kind (int or float) between low and high; ``closed`` is "left", "right",
    "both" or "neither". A missing bound is infinite; NaN and booleans are never inside."""

    kind: type
    low: float = -math.inf
    high: float = math.inf
    closed: str = "left"

    def accepts(self, value) -> bool:
        wanted = numbers.Integral if self.kind is int else numbers.Real
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, wanted) or math.isnan(value):
            return False
        above = value >= self.low if self.closed in ("left", "both") else value > self.low
        below = value <= self.high if self.closed in ("right", "both") else value < self.high
        return above and below

    def normalize(self, value):
        return self.kind(value)

    def describe(self) -> str:
        show = int if self.kind is int else float
        low = "-inf" if math.isinf(self.low) else show(self.low)
        high = "inf" if math.isinf(self.high) else show(self.high)
        left = "[" if self.closed in ("left", "both") else "("
        right = "]" if self.closed in ("right", "both") else ")"
        return f"{'an int' if self.kind is int else 'a float'} in the range {left}{low}, {high}{right}"

    def from_text(self, text: str):
        for parse in (int, float) if self.kind is float else (int,):
            try:
                return parse(text)
            except ValueError:
                pass
        return NOT_READ


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values (names or numbers), in the order the messages list them."""

    values: tuple

    def accepts(self, value) -> bool:
        return isinstance(value, (str, numbers.Number)) and value in self.values

    def normalize(self, value):
        return value

    def describe(self) -> str:
        shown = "{" + ", ".join(map(repr, self.values)) + "}"
        return f"a str among {shown}" if all(isinstance(v, str) for v in self.values) else f"one of {shown}"

    def from_text(self, text: str):
        kind = type(self.values[0])
        try:
            return kind(text)
        except ValueError:
            return NOT_READ


@dataclass(frozen=True)
class Boolean:
    """True or False (Python's or NumPy's)."""

    def accepts(self, value) -> bool:
        return isinstance(value, (bool, np.bool_))

    def normalize(self, value):
        return bool(value)

    def describe(self) -> str:
        return "True or False"

    def from_text(self, text: str):
        return {"true": True, "false": False}.get(text.lower(), NOT_READ)


@dataclass(frozen=True)
class NoneValue:
    """None: the setting is off or takes its default."""

    def accepts(self, value) -> bool:
        return value is None

    def normalize(self, value):
        return None

    def describe(self) -> str:
        return "None"

    def from_text(self, text: str):
        return None if text.lower() == "none" else NOT_READ


@dataclass(frozen=True)
class FilePath:
    """A str or os.PathLike naming a file that can be written: its folder exists and takes new
    files, and no folder is at the path (:func:`gpubp.atomic_file.unwritable`; normalized to str)."""

    def accepts(self, value) -> bool:
        return isinstance(value, (str, os.PathLike)) and unwritable(value) is None

    def normalize(self, value):
        return str(value)

    def describe(self) -> str:
        return "a file path in an existing folder that takes new files (not a folder)"

    def from_text(self, text: str):
        return text


@dataclass(frozen=True)
class Instances:
    """An object of one of the classes named here, looked up in ``module`` when first needed
    (gpubp.optim checks its own settings through this table, so it cannot be imported here)."""

    module: str
    classes: tuple

    def accepts(self, value) -> bool:
        found = importlib.import_module(self.module)
        return isinstance(value, tuple(getattr(found, name) for name in self.classes))

    def normalize(self, value):
        return value

    def describe(self) -> str:
        return f"an instance of {' or '.join(self.classes)}"

    def from_text(self, text: str):
        return NOT_READ


@dataclass(frozen=True)
class Widths:
    """Layer widths: a list of ints >= 1, maybe empty; on the command line "256,128" or "none"."""

    def accepts(self, value) -> bool:
        return isinstance(value, (list, tuple)) and all(Interval(int, 1).accepts(w) for w in value)

    def normalize(self, value):
        return [int(w) for w in value]

    def describe(self) -> str:
        return "a list of ints in the range [1, inf)"

    def from_text(self, text: str):
        if text.strip().lower() in ("", "none"):
            return []
        try:
            return [int(part) for part in text.replace(" ", ",").split(",") if part]
        except ValueError:
            return NOT_READ


@dataclass(frozen=True)
class FloatDType:
    """float32, float64 or bfloat16 (float32 parameters, bfloat16 products: gpubp.bfloat16), as a
    name or anything numpy.dtype reads as one (normalized to the name)."""

    names: tuple = ("float32", "float64", np.dtype(ml_dtypes.bfloat16).name)  # the import names "bfloat16" to numpy

    def accepts(self, value) -> bool:
        try:
            return value is not None and np.dtype(value).name in self.names
        except (TypeError, ValueError):
            return False

    def normalize(self, value):
        return np.dtype(value).name

    def describe(self) -> str:
        return "a float dtype among {" + ", ".join(map(repr, self.names)) + "}"

    def from_text(self, text: str):
        return text


@dataclass(frozen=True)
class Setting:
    """One row of the table: the constraints (a value must meet one of them) and what it means."""

    constraints: tuple
    description: str

    def allowed(self) -> str:
        """The constraints in words, as "A, B or C"."""
        words = [c.describe() for c in self.constraints]
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
