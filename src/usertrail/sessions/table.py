"""The full rebuild's sessions as columns, and the `sessions` and `end_users` rows made from them column-wise.

The column-wise pass (`columnar.py`) finishes most keys in numpy: every run of theirs is simple. Their
sessions stay columns here, one numpy array per field, in (key, start) order, and become rows without a
`Session` object each: at 5M events, building 612k `Session` objects, then a row from each and an End
User Object per key from them, was a fifth of the rebuild. The rules are those of the Python path,
applied to arrays: `rules.is_closable`, `Session.is_empty`, `derive.session_row`, and for the End User
Object `profiles.standard.compute_columns` (the column-wise twin of `compute`). The property-based test
that checks the rebuild against incremental processing covers both paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import numpy as np

from usertrail.profiles.standard import compute_columns
from usertrail.sessions.rules import IDLE_MS

# Object columns, in SESSION_COLUMNS order after `client_session_ids`.
VALUE_COLUMNS = (
    "entry_path", "exit_path", "country", "region", "city", "browser", "browser_version", "os", "device_type",
)  # fmt: skip
# The session columns the End User Object takes from the user's latest session, in PROFILE_COLUMNS order.
LOCATED = ("country", "region", "city", "browser", "browser_version")


@dataclass
class SessionTable:
    """Sessions of keys whose runs numpy finished: run i belongs to `keys[key[i]]`; runs of a key are
    consecutive and in start order."""

    keys: list[str]
    key: np.ndarray
    start: np.ndarray
    end: np.ndarray
    events: np.ndarray
    interactions: np.ndarray
    page_views: np.ndarray
    hints: list[str]  # each run's client session ids, as the JSON text `sessions` stores
    values: dict[str, np.ndarray]  # VALUE_COLUMNS -> object array
    vars_code: np.ndarray  # index into vars_values, -1 for none
    vars_values: list[dict]  # decoded analytics properties, one per distinct value

    def owners(self) -> set[str]:
        """The keys that have sessions here."""
        return {self.keys[k] for k in np.unique(self.key).tolist()}

    def session_rows(self, project_id: int, now: int, runs: Runs | None, closes: np.ndarray | None) -> list[tuple]:
        """The `sessions` rows of `runs` (`self.runs`), sorted by key, then start time, as the Python path
        writes them. `closes`: per session of the table, when it was stored closed, or -1 (sessions/stamps.py);
        a closed session keeps that time, the others are closed at `now`."""
        if runs is None:
            return []
        order, n = runs.order, len(runs.order)
        closed_at = np.full(n, now, np.int64) if closes is None else np.where(closes[order] >= 0, closes[order], now)
        vars_json = np.array(
            [msgspec.json.encode(v).decode() if v else None for v in self.vars_values] + [None], object
        )
        return list(
            zip(
                [project_id] * n,
                np.array(self.keys, object)[runs.key].tolist(),
                runs.start.tolist(),
                runs.end.tolist(),
                self.events[order].tolist(),
                self.interactions[order].tolist(),
                self.page_views[order].tolist(),
                runs.is_empty.tolist(),
                np.where(runs.closable, "closed", "open").tolist(),
                [at if shut else None for at, shut in zip(closed_at.tolist(), runs.closable.tolist(), strict=True)],
                np.array(self.hints, object)[order].tolist(),
                *(self.values[name][order].tolist() for name in VALUE_COLUMNS),
                vars_json[runs.vars_code].tolist(),
                strict=True,
            )
        )

    def session_rows_skipping(
        self, project_id: int, now: int, closes: np.ndarray | None, skip: frozenset[str]
    ) -> list[tuple]:
        """`session_rows` of the runs of every key not in `skip` (a staging helper's `make_rows`)."""
        return self.session_rows(project_id, now, self.runs(now, skip), closes)

    def profile_rows(self, project_id: int, now: int, runs: Runs | None) -> tuple[list[tuple], int, int]:
        """(end_users rows, sessions closed, owners) of `runs` (`self.runs`), by key."""
        if runs is None:
            return [], 0, 0
        counted = np.flatnonzero(runs.closable & ~runs.is_empty)
        users, attributes = compute_columns(
            runs.key[counted],
            runs.start[counted],
            runs.end[counted],
            {name: self.values[name][runs.order][counted] for name in LOCATED},
            runs.vars_code[counted],
            self.vars_values,
        )
        properties = attributes["analytics_properties"]
        profile_rows = list(
            zip(
                [project_id] * len(users),
                np.array(self.keys, object)[users].tolist(),
                attributes["first_seen"],
                attributes["last_seen"],
                attributes["total_sessions"],
                attributes["average_session_duration"],
                attributes["total_session_duration"],
                attributes["average_time_between_sessions"],
                *(attributes[name] for name in LOCATED),
                [msgspec.json.encode(p).decode() if p else None for p in properties],
                [now] * len(users),
                strict=True,
            )
        )
        return profile_rows, int(runs.closable.sum()), int(runs.last_of_key.sum())

    def runs(self, now: int, skip: frozenset[str]) -> Runs | None:
        """The runs of every key not in `skip`, ordered by key, then start, with what both kinds of rows
        take from them at `now`; None if there are none."""
        rank = np.empty(len(self.keys), np.int64)
        rank[sorted(range(len(self.keys)), key=self.keys.__getitem__)] = np.arange(len(self.keys))
        skipped = np.array([k in skip for k in self.keys], bool)
        kept = np.flatnonzero(~skipped[self.key])
        order = kept[np.argsort(rank[self.key[kept]], kind="stable")]
        n = len(order)
        if not n:
            return None
        key, end = self.key[order], self.end[order]
        last_of_key = np.ones(n, bool)
        last_of_key[:-1] = key[1:] != key[:-1]
        interactions, page_views = self.interactions[order], self.page_views[order]
        return Runs(
            order=order,
            key=key,
            start=self.start[order],
            end=end,
            last_of_key=last_of_key,
            closable=~last_of_key | (now - end >= IDLE_MS),
            is_empty=(interactions == 0) & (page_views <= 1),
            vars_code=self.vars_code[order],
        )


@dataclass(frozen=True)
class Runs:
    """A `SessionTable`'s kept runs in row order (`order`: their indexes in the table) and what both kinds
    of rows derive from them."""

    order: np.ndarray
    key: np.ndarray
    start: np.ndarray
    end: np.ndarray
    last_of_key: np.ndarray
    closable: np.ndarray
    is_empty: np.ndarray
    vars_code: np.ndarray
