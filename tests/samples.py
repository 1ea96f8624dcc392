"""Event samples: WalkMe's documented example event (shared/spec 000, reassembled) and builders."""

from __future__ import annotations

import copy
import json
import time

from usertrail.store.events import event_row

# The example from "What Data Does WalkMe Collect?", joined back into one object.
SPEC_EVENT: dict = {
    "time": 1553433890150,
    "type": "play",
    "data": {
        "type": "wt",
        "oId": 124909,
        "oName": "Log in",
        "pId": "1553433890148-124909-889838df-c7da-f212-e553-08b4142a6894",
        "pInit": {"type": 1},
        "oRequestedSubObject": 1394694,
        "oActualSubObject": 1394694,
        "pluginVer": "x.x",
        "libVer": "20190306-123518-32b80d9f",
    },
    "sId": "b34cd63b-b54f-3637-f48b-9ec7fb8247f6",
    "wm": {
        "uId": "3210be7ad82f403298f7c4da065ec657",
        "euId": "7302c5a9-9dbf-ef49-e898-8fce4d0add48",
        "euIdSource": "Cache",
        "permId": -1,
        "env": 0,
        "interactionGuid": "a2aab74b-60ec-816c-10d4-42d02ea341f5",
        "platform": 1,
    },
    "env": {
        "browser": {"name": "Chrome", "version": "72.0.3626.121", "string": "Chrome 72.0.3626.121"},
        "os": {"name": "Windows"},
        "mobile": False,
        "screen": {"height": 561, "width": 1249},
        "timezone": -120,
    },
    "ctx": {
        "location": {"protocol": "http:", "hostname": "shopme.walkme.com", "pathname": "/product/pink-alligator/"},
        "isIframe": False,
        "visitId": "9ef11e58809fd93c55d22f12c3fd401c",
        "title": "Pink Alligator - ShopMe",
    },
    "visions": {"sId": "3af2e125-e04a-4aa8-84cb-84e8b4c64141"},
    "version": {"lib": "20190306-123518-32b80d9f", "pe": "5.0.0"},
}


def walkme_event(**changes) -> dict:
    """A copy of the spec event; keyword args replace top-level keys, `wm_*`/`data_*` nested ones."""
    event = copy.deepcopy(SPEC_EVENT)
    for key, value in changes.items():
        if key.startswith(("wm_", "data_", "ctx_")):
            section, _, field = key.partition("_")
            event[section][field] = value
        else:
            event[key] = value
    return event


def walkme_body(events: list[dict], client_ts: int | None = None) -> bytes:
    """The WalkMe wire format: a header line, then one JSON event per line."""
    header = {"_static": True, "Wm-Client-Timestamp": client_ts if client_ts is not None else now_ms()}
    return "\n".join(json.dumps(x) for x in [header, *events]).encode()


def now_ms() -> int:
    return int(time.time() * 1000)


def event_row_of(project_id: int, user: str, event_id: str, ts: int = 1_000) -> tuple:
    """A stored native `track` event's row (EVENT_COLUMNS order), for tests that journal rows directly."""
    return event_row(
        project_id=project_id,
        user_key=user,
        event_id=event_id,
        ts=ts,
        client_ts=ts,
        received_at=ts,
        env="production",
        source="native",
        type="track",
        id_source="variable",
        is_mobile=False,
        payload="{}",
    )
