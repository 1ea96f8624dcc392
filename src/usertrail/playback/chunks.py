"""The chunk wire format: a JSON array of rrweb events, optionally gzip-compressed.

Checked on arrival: size before and after decompression, the shape of every event (type, data,
timestamp), and, when the environment allows no input values, that the DOM snapshots in it
(full snapshots and added nodes) carry no unmasked value of a text-like input, textarea or select.
Input events themselves carry no input type (a checkbox's value looks like typed text), so they
are not checked here: masking them is the recorder's job.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Annotated

import msgspec

# rrweb's EventType and IncrementalSource values the server looks into.
FULL_SNAPSHOT, INCREMENTAL, META = 2, 3, 4
MUTATION = 0
ELEMENT_NODE = 2
# Input types whose value the snippet masks (rrweb's maskAllInputs, plus `hidden`); a button's label is not.
_MASKED_INPUT_TYPES = {
    "",
    "text",
    "password",
    "email",
    "search",
    "tel",
    "url",
    "number",
    "hidden",
    "date",
    "datetime-local",
    "month",
    "week",
    "time",
}


class ChunkError(ValueError):
    """A chunk the server refuses: HTTP status, JSON path and reason."""

    def __init__(self, status: int, path: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.path, self.reason = status, path, reason


class RrwebEvent(msgspec.Struct):
    """The part of an rrweb `eventWithTime` every event has; other fields pass through unchanged."""

    type: Annotated[int, msgspec.Meta(ge=0, le=6)]
    data: dict
    timestamp: Annotated[int, msgspec.Meta(ge=0)]


_decoder = msgspec.json.Decoder(list[RrwebEvent])


@dataclass(frozen=True)
class Chunk:
    raw: bytes  # the JSON array as recorded
    events: list[RrwebEvent]

    @property
    def first_ts(self) -> int | None:
        return min((e.timestamp for e in self.events), default=None)

    @property
    def last_ts(self) -> int | None:
        return max((e.timestamp for e in self.events), default=None)

    def urls(self) -> list[str]:
        """Page URLs from the chunk's Meta events, in order."""
        found = []
        for e in self.events:
            href = e.data.get("href") if e.type == META else None
            if isinstance(href, str) and href not in found:
                found.append(href)
        return found


def decompress(body: bytes, encoding: str, max_raw_bytes: int) -> bytes:
    """The JSON text of a chunk sent as `json` or `gzip`, never inflating past `max_raw_bytes`."""
    if encoding == "json":
        raw = body
    elif encoding == "gzip":
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(body, max_raw_bytes + 1)
        except zlib.error as exc:
            raise ChunkError(400, "$", f"body is not valid gzip: {exc}") from None
        if not inflater.eof and len(raw) <= max_raw_bytes:
            raise ChunkError(400, "$", "gzip body is truncated")
    else:
        raise ChunkError(400, "enc", "enc must be `json` or `gzip`")
    if len(raw) > max_raw_bytes:
        raise ChunkError(413, "$", f"chunk is larger than {max_raw_bytes} bytes uncompressed")
    return raw


def parse(raw: bytes, inputs_allowed: bool) -> Chunk:
    """Validate the events; with no input allowed, every recorded input value must be masked."""
    try:
        events = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        reason, _, path = str(exc).partition(" - at `")
        raise ChunkError(400, path.rstrip("`") or "$", reason) from None
    except msgspec.DecodeError as exc:
        raise ChunkError(400, "$", f"malformed JSON: {exc}") from None
    if not events:
        raise ChunkError(400, "$", "a chunk holds at least one event")
    if not inputs_allowed:
        for i, event in enumerate(events):
            _check_masked(event, f"$[{i}].data")
    return Chunk(raw, events)


def _masked(value: object) -> bool:
    return not isinstance(value, str) or value.strip("*") == ""


def _check_masked(event: RrwebEvent, path: str) -> None:
    data = event.data
    if event.type == FULL_SNAPSHOT:
        _check_node(data.get("node"), f"{path}.node")
    elif event.type == INCREMENTAL and data.get("source") == MUTATION:
        for i, added in enumerate(data.get("adds") or []):
            if isinstance(added, dict):
                _check_node(added.get("node"), f"{path}.adds[{i}].node")


def _holds_typed_value(node: dict) -> bool:
    tag = str(node.get("tagName", "")).lower()
    if tag in ("textarea", "select"):
        return True
    return tag == "input" and str(node["attributes"].get("type", "")).lower() in _MASKED_INPUT_TYPES


def _check_node(node: object, path: str) -> None:
    # Iterative: a page's DOM can be deeper than Python's recursion limit.
    stack = [(node, path)]
    while stack:
        current, where = stack.pop()
        if not isinstance(current, dict):
            continue
        attributes = current.get("attributes")
        if (
            current.get("type") == ELEMENT_NODE
            and isinstance(attributes, dict)
            and _holds_typed_value(current)
            and not _masked(attributes.get("value"))
        ):
            raise ChunkError(
                400, f"{where}.attributes.value", "unmasked input value; this environment records no input values"
            )
        for i, child in enumerate(current.get("childNodes") or []):
            stack.append((child, f"{where}.childNodes[{i}]"))
