"""Custom attributes: their types, the 100-attribute cap, and typed value conversion."""

from __future__ import annotations

import datetime as dt
import math
from typing import Literal

import msgspec

from usertrail.collect.wire import ANALYTICS_PROPERTIES
from usertrail.profiles.standard import STANDARD_ATTRIBUTES

AttributeType = Literal["string", "number", "date", "boolean"]
ATTRIBUTE_TYPES: tuple[str, ...] = ("string", "number", "date", "boolean")
CAP = 100
MAX_NAME_LENGTH = 128
MAX_STRING_VALUE = 2_000
MAX_USER_ID = 256

# The five analytics properties (collect.wire.ANALYTICS_PROPERTIES) are built into every End
# User Object; they do not count against the cap (see docs/attributes.md).


class InvalidValue(ValueError):
    """A value that does not fit the attribute's type; the message says why."""


def convert(value: object, type_: str) -> str | float | bool | None:
    """The value as the attribute's type (dates as `YYYY-MM-DD` strings); None clears the attribute.

    Strings that spell the type are accepted (CSV cells and most APIs send text).
    """
    if value is None:
        return None
    if type_ == "string":
        if isinstance(value, bool | dict | list):
            raise InvalidValue(f"expected a string, got {type(value).__name__}")
        text = value if isinstance(value, str) else _number_text(value)
        if len(text) > MAX_STRING_VALUE:
            raise InvalidValue(f"string longer than {MAX_STRING_VALUE} characters")
        return text
    if type_ == "number":
        if isinstance(value, bool):
            raise InvalidValue("expected a number, got a boolean")
        try:
            number = float(value) if isinstance(value, int | float | str) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise InvalidValue(f"expected a number, got {value!r}")
        return number
    if type_ == "date":
        text = value.strip() if isinstance(value, str) else ""
        if len(text) == 10:
            try:
                return dt.date.fromisoformat(text).isoformat()
            except ValueError:
                pass
        raise InvalidValue(f"expected a date as YYYY-MM-DD, got {value!r}")
    if type_ == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.strip().lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise InvalidValue(f"expected true or false, got {value!r}")
    raise InvalidValue(f"unknown type {type_!r}")


def user_id_text(value: object) -> str:
    """The end-user id as a string (numbers become their decimal text); raises ValueError."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected a string or number, got {msgspec.json.encode(value).decode()}")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"expected a string or number, got {value!r}")
        text = str(int(value)) if value.is_integer() else repr(value)
    elif isinstance(value, str):
        text = value
    else:
        raise ValueError(f"expected a string or number, got {type(value).__name__}")
    if not text.strip():
        raise ValueError("the end-user id is empty")
    if len(text) > MAX_USER_ID:
        raise ValueError(f"end-user ids are at most {MAX_USER_ID} characters")
    return text


def _number_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def infer_type(value: object) -> str:
    """The type a first value implies when no mapping names one."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str) and len(value) == 10:
        try:
            dt.date.fromisoformat(value)
            return "date"
        except ValueError:
            pass
    return "string"


# The built-in names of every End User Object. Segment rules resolve a name to the built-in first,
# so a custom attribute under one of these names could never be used (docs/attributes.md).
RESERVED_NAMES: frozenset[str] = frozenset((*STANDARD_ATTRIBUTES, *ANALYTICS_PROPERTIES))


def check_name(name: object) -> str | None:
    """Why a name cannot be an attribute name, or None."""
    if not isinstance(name, str) or not name.strip():
        return "an attribute name must be a non-empty string"
    if len(name) > MAX_NAME_LENGTH:
        return f"attribute names are at most {MAX_NAME_LENGTH} characters"
    if name in RESERVED_NAMES:
        return (
            f"{name!r} is a built-in attribute of every end user; choose another name "
            f"(reserved: {', '.join(STANDARD_ATTRIBUTES)}, {', '.join(ANALYTICS_PROPERTIES)})"
        )
    return None


class CellConverter:
    """Converts the text cells of one typed column (CSV imports) to typed values.

    Returns the value as `convert` does, or raises InvalidValue with `convert`'s reason. Columns
    repeat values (plans, countries, dates), so recent results are remembered; the memory is
    bounded by clearing it when it fills.
    """

    MAX_REMEMBERED = 50_000

    def __init__(self, type_: str) -> None:
        if type_ not in ATTRIBUTE_TYPES:
            raise InvalidValue(f"unknown type {type_!r}")
        self.type = type_
        self._seen: dict[str, str | float | bool] = {}
        self._refused: dict[str, str] = {}  # cell → reason

    def __call__(self, cell: str) -> str | float | bool:
        hit = self._seen.get(cell)
        if hit is not None:
            return hit
        reason = self._refused.get(cell)
        if reason is None:
            try:
                hit = convert(cell, self.type)
            except InvalidValue as exc:
                reason = str(exc)
            if len(self._seen) + len(self._refused) >= self.MAX_REMEMBERED:
                self._seen.clear()
                self._refused.clear()
            if reason is None:
                self._seen[cell] = hit  # type: ignore[assignment]
                return hit  # type: ignore[return-value]
            self._refused[cell] = reason
        raise InvalidValue(reason)

    def column(self, cells: list[str]) -> tuple[list[str | float | bool | None], list[tuple[int, str]]]:
        """Convert a column of cells at once: (values, [(index, reason), …]); an empty or blank cell is None.

        The same results as converting each cell, reached by whole-column operations where the
        column allows: a clean text column is kept as it is, a number column goes through `float`
        in one `map`, and the others look their cells up in the remembered results in one `map`.
        Only the cells these leave open (blank, refused, not seen yet) are converted one by one.
        """
        if self.type == "string":
            blank = "" in cells or any(map(str.isspace, cells))
            if not blank and max(map(len, cells), default=0) <= MAX_STRING_VALUE:
                return cells, []  # type: ignore[return-value]
        elif self.type == "number":
            try:
                values = list(map(float, cells))
            except ValueError:
                pass
            else:
                if all(map(math.isfinite, values)):
                    return values, []  # type: ignore[return-value]
        else:
            values = list(map(self._seen.get, cells))
            if None not in values:
                return values, []  # type: ignore[return-value]
        values, bad = [], []
        for i, cell in enumerate(cells):
            if not cell or cell.isspace():
                values.append(None)  # an empty cell leaves the attribute unchanged
                continue
            try:
                values.append(self(cell))
            except InvalidValue as exc:
                values.append(None)
                bad.append((i, str(exc)))
        return values, bad


def infer_column_type(cells: list[str]) -> str:
    """The type a column's sample of text cells suggests: number, boolean, date, else string.

    Empty cells are ignored; numbers written with a leading zero (`007`, zip codes, ids) stay strings.
    """
    values = [c.strip() for c in cells if c.strip()]
    if not values:
        return "string"
    for type_ in ("number", "boolean", "date"):
        try:
            for v in values:
                convert(v, type_)
        except InvalidValue:
            continue
        if type_ == "number" and any(_leading_zero(v) for v in values):
            return "string"
        return type_
    return "string"


def _leading_zero(text: str) -> bool:
    digits = text.lstrip("+-")
    return len(digits) > 1 and digits[0] == "0" and digits[1].isdigit()
