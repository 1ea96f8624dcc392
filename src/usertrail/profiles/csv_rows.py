"""Reading the rows of a CSV import: parsed, checked, keyed and converted a chunk at a time, with no database.

`read_chunks` is the whole of it. It runs in a thread of the importing process for small files and
in the reader process (`profiles/csv_reader.py`) for large ones; the jobs, the mapping and the
writing are `integrations/csv_import.py`'s. This module and what it imports hold no SQLAlchemy and
nothing of the store, so that the reader process starts in a fraction of the time.

Most blocks of rows need no CSV parser: when a block holds no quote, no lone carriage return, no
blank line and no line longer than the csv module's field limit, every line is one row
whose fields are its text split at the delimiter, which is what the csv module would read. Such a
block is split in a few whole-text operations and its columns taken by slicing; any other block
is read by the csv module, so quoted fields (with delimiters or line breaks) and the csv module's
errors stay exactly as they were.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import itertools
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import msgspec

from usertrail.profiles.custom import MAX_USER_ID, CellConverter, user_id_text
from usertrail.profiles.history import ColumnsHistory, new_values_history

if TYPE_CHECKING:
    from usertrail.project_settings import UuidSettings

DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}

KeyColumn = Callable[[list[str]], list[str]]  # end-user ids → their keys, in order


class CsvFileError(ValueError):
    """The file cannot be imported at all (encoding, header, delimiter); `line` where it was found."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.line = reason, line


@dataclass(frozen=True)
class ResolvedColumn:
    index: int  # in the header
    column: str
    name: str  # the attribute
    type: str
    inferred: bool  # the type came from the registry or the sample, not from the mapping

    def as_json(self) -> dict:
        return {"column": self.column, "name": self.name, "type": self.type, "type_inferred": self.inferred}


@dataclass(frozen=True)
class ImportPlan:
    """A mapping resolved against one file's header and the project's registry."""

    delimiter: str
    bom: bool
    header: tuple[str, ...]
    id_index: int
    id_column: str
    columns: tuple[ResolvedColumn, ...]

    def as_json(self) -> dict:
        return {
            "delimiter": DELIMITER_NAMES[self.delimiter],
            "bom": self.bom,
            "id_column": self.id_column,
            "columns": [c.as_json() for c in self.columns],
        }

    def hash(self) -> str:
        key = [self.delimiter, self.id_column, [(c.column, c.name, c.type) for c in self.columns]]
        return hashlib.sha256(msgspec.json.encode(key)).hexdigest()


@dataclass
class Chunk:
    """Rows read since the last write: the good ones' keys and converted values, and the refused ones.

    What the reader process sends the importer (msgpack, `CHUNK_DECODER`), so only what the writer needs.
    """

    first_line: int
    keys: list[str] = field(default_factory=list)
    errors: list[tuple[int, str | None, str]] = field(default_factory=list)  # (line, column, reason)
    failed_rows: int = 0  # refused whole (field count, id)
    bytes_read: int = 0  # of the file, up to the chunk's end
    next_line: int = 0  # the line after the chunk's last row
    # (name, type, values) per column, aligned with the keys, and 1 per row with a bad value.
    columns: list[tuple[str, str, list[str | float | bool | None]]] = field(default_factory=list)
    bad_values: bytearray = field(default_factory=bytearray)
    history: ColumnsHistory | None = None  # each row's history text, if new users (see `read_chunks`)


CHUNK_DECODER = msgspec.msgpack.Decoder(Chunk)


def key_column(uuid: UuidSettings | None) -> KeyColumn:
    """ids → end-user keys a column at a time, as `integrations.user_keys.key_function` makes them one by one."""
    if uuid is None or not uuid.hash:
        return lambda ids: list(map("u:".__add__, ids))
    from usertrail.collect.pipeline import identity_for  # only hashed ids need the collection code

    return lambda ids: [identity_for(uuid, user_id, None)[2] for user_id in ids]


class _Lines:
    """A file's lines as the csv module reads a file opened with `newline=""` (ended by `\\n`, `\\r`
    or `\\r\\n`, kept whole), and, while none is held back, its next lines as raw bytes by the block.

    Lines handed back (`hold`) or left over from a bytes line that held a lone `\\r` come first.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._held: collections.deque[str] = collections.deque()
        self._first = True  # the first line may start with a byte-order mark

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self._held:
            return self._held.popleft()
        data = next(self._raw)
        text = data.decode("utf-8-sig" if self._first else "utf-8")
        self._first = False
        cr = text.find("\r")
        if cr == -1 or (cr == len(text) - 2 and text.endswith("\r\n")):
            return text
        self.hold(text)
        return self._held.popleft()

    def hold(self, text: str) -> None:
        """Put lines back in front of the file's next ones."""
        self._held.extend(io.StringIO(text, newline="").readlines())

    def block(self, count: int) -> list[bytes] | None:
        """Up to `count` next lines as bytes (an empty list at the end), or None while lines are held back."""
        if self._held or self._first:
            return None
        return list(itertools.islice(self._raw, count))


def _plain_text(lines: list[bytes]) -> str | None:
    """The block's text with `\\n` line ends and no final one, if every line of it is one row that is
    its text split at the delimiter; None if the csv module must read it (see the module's docstring)."""
    block = b"".join(lines)
    if b'"' in block or b"\n" in lines or b"\r\n" in lines:
        return None
    if max(map(len, lines)) > csv.field_size_limit():
        return None
    text = block.decode("utf-8")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            return None
    return text[:-1] if text.endswith("\n") else text


Checked = tuple[Chunk, list[list[str]], Sequence[int]]  # the chunk, its cells by plan column, each row's line


def _checked_rows(
    plan: ImportPlan, first_line: int, rows: list[list[str]], ends: list[int] | range, keys: KeyColumn
) -> Checked:
    """The rows read (`ends`: the line where each ends) as a chunk of the ones with the header's field
    count and a valid end-user id, with their keys, their cells by plan column and the line where
    each starts; the others as errors of their line.

    Most files hold no blank line, bad row or bad id: that is checked on whole columns first (`map`
    over the rows), and the keys are made the same way; otherwise each row is checked in turn.
    """
    width, id_index = len(plan.header), plan.id_index
    if [] not in rows and not any(map(width.__ne__, map(len, rows))):
        ids = list(map(str.strip, map(operator.itemgetter(id_index), rows)))
        if "" not in ids and max(map(len, ids)) <= MAX_USER_ID:
            cells = [list(map(operator.itemgetter(c.index), rows)) for c in plan.columns]
            return Chunk(first_line, keys=keys(ids)), cells, _starts(first_line, ends)
    chunk = Chunk(first_line)
    good, starts = [], []
    for i, row in enumerate(rows):
        if not row:
            continue  # a blank line
        start = ends[i - 1] + 1 if i else first_line
        problem = None
        if len(row) != width:
            problem = (start, None, f"expected {width} fields as in the header, got {len(row)}")
        else:
            try:
                key = keys([user_id_text(row[id_index].strip())])[0]
            except ValueError as exc:
                problem = (start, plan.id_column, str(exc))
        if problem is not None:
            chunk.errors.append(problem)
            chunk.failed_rows += 1
        else:
            chunk.keys.append(key)
            good.append(row)
            starts.append(start)
    return chunk, [list(map(operator.itemgetter(c.index), good)) for c in plan.columns], starts


def _starts(first_line: int, ends: list[int] | range) -> Sequence[int]:
    """The line where each row starts, from where each ends."""
    if isinstance(ends, range):
        return ends
    return [first_line, *(end + 1 for end in ends[:-1])] if ends else []


def _plain_chunk(plan: ImportPlan, first_line: int, text: str, lines: list[bytes], keys: KeyColumn) -> Checked:
    """`_checked_rows` of a plain block (`_plain_text`): when every line has the header's field count
    and a valid id, the columns are slices of the block's fields, with no list per row."""
    delimiter, width = plan.delimiter, len(plan.header)
    ends = range(first_line, first_line + len(lines))
    if set(map(bytes.count, lines, itertools.repeat(delimiter.encode()))) == {width - 1}:
        fields = text.replace("\n", delimiter).split(delimiter)
        ids = list(map(str.strip, fields[plan.id_index :: width]))
        if "" not in ids and max(map(len, ids)) <= MAX_USER_ID:
            return Chunk(first_line, keys=keys(ids)), [fields[c.index :: width] for c in plan.columns], ends
    rows = list(map(str.split, text.split("\n"), itertools.repeat(delimiter)))
    return _checked_rows(plan, first_line, rows, ends, keys)


def _row_ends(rows: list[list[str]], first_line: int, last_line: int) -> list[int] | range:
    """The line where each row read ends, given where the first starts and the last ends.

    A row takes one line unless a quoted field holds line breaks (the reader keeps them in the
    field), so the lines are counted from the rows rather than asked of the reader after each one.
    """
    if last_line - first_line + 1 == len(rows):
        return range(first_line, last_line + 1)
    ends, line = [], first_line - 1
    for row in rows:
        line += 1
        for cell in row:
            if "\n" in cell or "\r" in cell:
                line += cell.count("\n") + cell.count("\r") - cell.count("\r\n")
        ends.append(line)
    return ends


def _unreadable(exc: OSError, line: int | None) -> CsvFileError:
    reason = exc.strerror or type(exc).__name__
    return CsvFileError(f"the file can no longer be read ({reason}): was it removed or moved during the import?", line)


def read_chunks(
    path: Path,
    plan: ImportPlan,
    uuid: UuidSettings | None,
    chunk_rows: int,
    slots: tuple[str, ...] | None = None,
    size: int | None = None,
) -> Iterator[Chunk]:
    """The file's rows in chunks of `chunk_rows`, checked, keyed (under `uuid`) and converted, each
    handed on as soon as it is made (one chunk at a time in memory here).

    With `slots` (where the plan's columns are expected to be stored), each chunk also brings the
    history text of each row as if its user were new, which the writer uses for new users if the
    columns did land there: that work then happens here, beside the writer, rather than in it.
    A file that cannot be opened or read on, or whose length is no longer `size` (the bytes checked
    before the import), raises CsvFileError, whichever process reads it.
    """
    converters = [CellConverter(c.type) for c in plan.columns]
    keys = key_column(uuid)
    line = 1
    try:
        raw = open(path, "rb")  # noqa: SIM115 (closed by the `with` below, after the errors it may raise)
    except OSError as exc:
        raise _unreadable(exc, None) from None
    with raw:
        lines = _Lines(raw)
        try:
            header = csv.reader(lines, delimiter=plan.delimiter)
            try:
                next(header, None)
            except csv.Error as exc:
                raise CsvFileError(f"the CSV cannot be read: {exc}", header.line_num) from None
            line = header.line_num + 1
            while True:
                block = lines.block(chunk_rows)
                if block == []:
                    break
                text = None if block is None else _plain_text(block)
                if text is not None:
                    chunk, cells, starts = _plain_chunk(plan, line, text, block, keys)  # type: ignore[arg-type]
                    next_line = line + len(block)  # type: ignore[arg-type]
                else:
                    if block:
                        lines.hold(b"".join(block).decode("utf-8"))
                    reader = csv.reader(lines, delimiter=plan.delimiter)
                    try:
                        rows = list(itertools.islice(reader, chunk_rows))
                    except csv.Error as exc:
                        raise CsvFileError(f"the CSV cannot be read: {exc}", line - 1 + reader.line_num) from None
                    if not rows:
                        break
                    next_line = line + reader.line_num
                    chunk, cells, starts = _checked_rows(plan, line, rows, _row_ends(rows, line, next_line - 1), keys)
                    del rows  # the cells not kept by the columns
                _converted(plan, chunk, cells, starts, converters)
                del cells, starts
                if slots is not None:
                    chunk.history = ColumnsHistory(slots, new_values_history(slots, [c[2] for c in chunk.columns]))
                chunk.bytes_read = raw.tell()  # lines held back were read ahead: up to a block more
                line = chunk.next_line = next_line
                yield chunk
                del chunk  # not kept while the next one is read
        except OSError as exc:
            raise _unreadable(exc, line) from None
        except UnicodeDecodeError:
            raise CsvFileError("the file is not UTF-8 text (it changed after it was checked)", line) from None
        read = raw.tell()
    if size is not None and read != size:
        raise CsvFileError(
            f"the file changed during the import: {size:,} bytes were checked, {read:,} bytes read", line
        )


def _converted(
    plan: ImportPlan, chunk: Chunk, cells: list[list[str]], starts: Sequence[int], converters: list[CellConverter]
) -> None:
    """Convert the cells (by plan column, aligned with the chunk's keys; `starts`: each row's line) to
    stored values, a column at a time; a bad cell is an error of its row and column."""
    errors = chunk.errors
    failed = chunk.bad_values = bytearray(len(chunk.keys))
    for col, convert, column in zip(plan.columns, converters, cells, strict=True):
        values, bad = convert.column(column)
        for i, reason in bad:
            errors.append((starts[i], col.column, reason))
            failed[i] = 1
        chunk.columns.append((col.name, col.type, values))
