"""The user list's lookup tables: search words and analytics-property values per end user.

`end_users` keeps the analytics properties as one JSON column and the searchable text in six columns;
neither can be searched or sorted through an index. These two tables hold the same facts one row per
word and per property, with indexes in (project, word, user) and (project, property, value, user)
order, so a search and a sort by an analytics property read an index range instead of every user of
the project (docs/benchmarks.md, "Admin page load"). They are derived state: every writer of
`end_users` calls `refresh` (or `rebuild`) in the same transaction, and erasing a user deletes them.

Search semantics (docs/sessions.md, "The user list"): text is split into words (runs of letters,
digits and `_`, case-folded); a query matches a user when each of its words starts one of the user's
words. "ber" finds Berlin; "erlin" does not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec
import sqlalchemy as sa

from usertrail.store.database import insert_rows
from usertrail.store.schema import end_users, user_properties, user_words

# Long words and values are cut: a B-tree entry must stay small (PostgreSQL refuses entries over
# ~2.7 kB), and a prefix search or a sort order rarely depends on the 65th character.
MAX_WORD = 64
MAX_VALUE = 256
CHUNK = 500  # keys per IN list
# Word rows above which a search word is tested per listed user (see `search`).
PAGE_BROAD = 5_000
COUNT_BROAD = 200_000
# Above every character a word can hold: the end of a prefix's index range.
_PAST_PREFIX = "\U0010ffff"
_WORD = re.compile(r"\w+")
WORD_COLUMNS = ("project_id", "user_key", "word")
PROPERTY_COLUMNS = ("project_id", "user_key", "name", "value")

SEARCHED = (
    end_users.c.user_key,
    end_users.c.country,
    end_users.c.region,
    end_users.c.city,
    end_users.c.browser_name,
    end_users.c.analytics_properties,
)


def words(text: str) -> list[str]:
    """The search words of `text`, case-folded and cut to MAX_WORD characters, in order, without repeats."""
    return list(dict.fromkeys(w[:MAX_WORD] for w in _WORD.findall(text.casefold())))


def property_text(value: object) -> str | None:
    """An analytics property's value as the list sorts it: strings as they are, other JSON as its text
    (what PostgreSQL's `->>` gives); None for a JSON null."""
    if value is None:
        return None
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    return text[:MAX_VALUE]


def _rows_of(project_id: int, row) -> tuple[list[tuple], list[tuple]]:
    """The (word rows, property rows) of one `end_users` row (SEARCHED columns in order)."""
    key, *located, properties_json = row
    properties = msgspec.json.decode(properties_json) if properties_json else {}
    if not isinstance(properties, dict):
        properties = {}
    texts = [key, *(t for t in located if t)]
    props = []
    for name, value in properties.items():
        text = property_text(value)
        if text is not None:
            props.append((project_id, key, name, text))
            texts.append(text)
    found = words(" ".join(texts))
    return [(project_id, key, w) for w in found], props


def _index(conn: sa.Connection, project_id: int, rows: Iterable) -> None:
    word_rows, property_rows = lookup_rows(project_id, rows)
    insert_rows(conn, user_words, WORD_COLUMNS, word_rows)
    insert_rows(conn, user_properties, PROPERTY_COLUMNS, property_rows)


def forget(conn: sa.Connection, project_id: int, keys: Sequence[str]) -> None:
    """Delete the lookup rows of these keys (their End User Objects are gone or about to be rewritten)."""
    for i in range(0, len(keys), CHUNK):
        chunk = list(keys[i : i + CHUNK])
        for table in (user_words, user_properties):
            conn.execute(table.delete().where(table.c.project_id == project_id, table.c.user_key.in_(chunk)))


def refresh(conn: sa.Connection, project_id: int, keys: Sequence[str]) -> None:
    """Rewrite the lookup rows of these keys from their current `end_users` rows (none if they have none)."""
    forget(conn, project_id, keys)
    for i in range(0, len(keys), CHUNK):
        chunk = list(keys[i : i + CHUNK])
        _index(
            conn,
            project_id,
            conn.execute(
                sa.select(*SEARCHED).where(end_users.c.project_id == project_id, end_users.c.user_key.in_(chunk))
            ),
        )


def rebuild(conn: sa.Connection, project_id: int, rows: Iterable[Sequence] | None = None) -> None:
    """Rewrite the lookup rows of a whole project from `end_users` (the migration; the full rebuild computes
    them apart, `lookup_rows`, and writes them itself).

    `rows`: the SEARCHED columns of every `end_users` row of the project, when the caller has just
    written them (then they are not read back).
    """
    if rows is None:
        rows = conn.execute(sa.select(*SEARCHED).where(end_users.c.project_id == project_id)).all()
    for table in (user_words, user_properties):
        conn.execute(table.delete().where(table.c.project_id == project_id))
    _index(conn, project_id, rows)


def lookup_rows(project_id: int, rows: Iterable[Sequence]) -> tuple[list[tuple], list[tuple]]:
    """The (user_words, user_properties) rows of these `end_users` rows (SEARCHED columns), computed without
    the database."""
    word_rows: list[tuple] = []
    property_rows: list[tuple] = []
    for row in rows:
        w, p = _rows_of(project_id, row)
        word_rows += w
        property_rows += p
    return word_rows, property_rows


@dataclass(frozen=True)
class Search:
    """A search as WHERE clauses over `end_users`, one shaped for reading a page, one for the total."""

    page: sa.ColumnElement[bool]
    count: sa.ColumnElement[bool]


def search(conn: sa.Connection, project_id: int, query: str) -> Search | None:
    """Every word of `query` starts a word of the user; None when `query` has no words (only punctuation
    or spaces): then nothing is filtered.

    Each word's shape depends on how many word rows it starts (counted up to COUNT_BROAD, one short
    index range): a rare word is `user_key IN (those users)`, read from the word index; for a page, a
    word that starts more than PAGE_BROAD rows ("u" starts every identified key) is instead tested per
    user in the list's own order, which finds 50 matches after a few rows instead of first collecting
    most of the project's users; the total does the same above COUNT_BROAD rows."""
    page, count = [], []
    for term in words(query):
        in_range = (
            user_words.c.project_id == project_id,
            user_words.c.word >= term,
            user_words.c.word < term + _PAST_PREFIX,
        )
        probe = sa.select(sa.literal(1)).where(*in_range).limit(COUNT_BROAD).subquery()
        rows = conn.execute(sa.select(sa.func.count()).select_from(probe)).scalar_one()
        among = end_users.c.user_key.in_(sa.select(user_words.c.user_key).where(*in_range))
        each = sa.exists().where(*in_range, user_words.c.user_key == end_users.c.user_key)
        page.append(among if rows < PAGE_BROAD else each)
        count.append(among if rows < COUNT_BROAD else each)
    return Search(sa.and_(*page), sa.and_(*count)) if page else None
