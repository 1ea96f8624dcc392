"""Who owns an end-user key: an identified key owns itself; an anonymous key belongs to its earliest link."""

from __future__ import annotations

import sqlalchemy as sa

from usertrail.store.schema import identity_links


def is_identified(user_key: str) -> bool:
    return user_key.startswith("u:")


_OWNER = (
    sa.select(identity_links.c.person_key)
    .where(identity_links.c.project_id == sa.bindparam("p"), identity_links.c.user_key == sa.bindparam("k"))
    .order_by(identity_links.c.link_ts, identity_links.c.link_event_id, identity_links.c.person_key)
    .limit(1)
)
_LINKED = sa.select(identity_links.c.user_key).where(
    identity_links.c.project_id == sa.bindparam("p"), identity_links.c.person_key == sa.bindparam("k")
)


def owner_of(conn: sa.Connection, project_id: int, key: str) -> str:
    """The key whose sessions and End User Object hold this key's events."""
    if is_identified(key):
        return key
    row = conn.execute(_OWNER, {"p": project_id, "k": key}).first()
    return row.person_key if row else key


def members_of(conn: sa.Connection, project_id: int, owner: str) -> list[str]:
    """The owner and every anonymous key it owns (sorted after the owner)."""
    if not is_identified(owner):
        return [owner]
    anons = conn.execute(_LINKED, {"p": project_id, "k": owner}).scalars()
    return [owner, *sorted(a for a in anons if owner_of(conn, project_id, a) == owner)]
