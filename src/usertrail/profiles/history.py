"""The history text of new values: what `attribute_changes.changes` holds for a user written for the first time.

Kept apart from the store (no database, no SQLAlchemy) so that a CSV import's reader process can
make these texts beside the writer (`profiles/csv_rows.py`); `store/attributes.py` writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

# A column's values for `write_columns`, aligned with the keys: the typed value (as
# `profiles.custom.convert` returns it), or None where the row has no value (left unchanged).
ColumnValues = list[str | float | bool | None]


@dataclass(frozen=True)
class ColumnsHistory:
    """Each row's `attribute_changes.changes` text for a write of new users with every value present,
    made for the columns landing in `slots` (in column order)."""

    slots: tuple[str, ...]
    texts: list[str]


def _json_texts(values: ColumnValues) -> tuple[list[str | None], bool]:
    """Each value's JSON text (None stays None), encoded once per column or per distinct value, and
    whether a value is None."""
    if values and type(values[0]) is float and set(map(type, values)) == {float}:
        # A number's JSON holds no comma, so the encoded array splits into the values' texts.
        return msgspec.json.encode(values)[1:-1].decode().split(","), False
    distinct = set(values)
    missing = None in distinct
    distinct.discard(None)
    texts: dict[object, str | None] = dict(
        zip(distinct, map(bytes.decode, map(msgspec.json.encode, distinct)), strict=True)
    )
    texts[None] = None
    return list(map(texts.__getitem__, values)), missing


def new_values_history(slots: list[str] | tuple[str, ...], columns: list[ColumnValues]) -> list[str]:
    """Each row's history text when its user is new: `{"slot":[null,value],…}` for the row's values.

    Each column's values are encoded once: a column of numbers in one `msgspec` call, any other
    column once per distinct value (columns repeat values: plans, dates, flags). A row with every
    value is then one `%` of a template; a row without a value in a column leaves it out.
    """
    encoded, missing = [], False
    for values in columns:
        texts, column_missing = _json_texts(values)
        encoded.append(texts)
        missing = missing or column_missing
    if not missing:
        template = "{" + ",".join(f'"{slot}":[null,%s]' for slot in slots) + "}"
        return list(map(template.__mod__, zip(*encoded, strict=True)))
    rows = []
    for row in zip(*encoded, strict=True):
        present = (f'"{slot}":[null,{text}]' for slot, text in zip(slots, row, strict=True) if text is not None)
        rows.append("{" + ",".join(present) + "}")
    return rows
