"""The chunk wire format: a JSON array of rrweb events, optionally gzip-compressed.

Checked on arrival: size before and after decompression, the shape of every event (type, data,
timestamp), and what the recorder promised to keep private (docs/playback.md, "The server checks too"):

- a password's value is never stored unmasked: not in a DOM snapshot (full snapshot or added node), not
  in a `value` attribute mutation, not in an input event;
- when the environment allows no input values, the same holds for every text-like input, textarea and
  select;
- a blocked element (class `wm-hide`, a configured selector, or rrweb's placeholder marker `rr_width`)
  is only a placeholder: no children, no attribute but its class and size, nothing added into it.

rrweb's mutations and input events name their node by id only. The server knows a node's tag and type
from the snapshots of the same chunk (each page's first chunk holds its full snapshot); an event about
a node it cannot identify is left to the recorder's masking, which the browser tests check.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import msgspec

# rrweb's EventType and IncrementalSource values the server looks into.
FULL_SNAPSHOT, INCREMENTAL, META = 2, 3, 4
MUTATION, INPUT = 0, 5
ELEMENT_NODE = 2
# What rrweb keeps of a blocked element (rrweb-snapshot's `needBlock`): its class and its size.
PLACEHOLDER_ATTRIBUTES = {"class", "rr_width", "rr_height"}
BLOCK_CLASS = "wm-hide"
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


def parse(raw: bytes, inputs_allowed: bool, blocked_selectors: Sequence[str] = ()) -> Chunk:
    """Validate the events and the privacy promises (module docstring); `inputs_allowed`: an allow-list is set."""
    try:
        events = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        reason, _, path = str(exc).partition(" - at `")
        raise ChunkError(400, path.rstrip("`") or "$", reason) from None
    except msgspec.DecodeError as exc:
        raise ChunkError(400, "$", f"malformed JSON: {exc}") from None
    if not events:
        raise ChunkError(400, "$", "a chunk holds at least one event")
    _PrivacyCheck(inputs_allowed, [_SimpleSelector.parse(s) for s in blocked_selectors]).run(events)
    return Chunk(raw, events)


def _masked(value: object) -> bool:
    return not isinstance(value, str) or value.strip("*") == ""


def _input_kind(node: dict) -> str | None:
    """`password`, `typed` (a value the snippet masks) or None (a value that is not typed: a checkbox, a button)."""
    tag = str(node.get("tagName", "")).lower()
    if tag in ("textarea", "select"):
        return "typed"
    if tag != "input":
        return None
    attributes = node["attributes"]
    kind = str(attributes.get("type", "")).lower()
    # rrweb marks an input that was a password before the page changed its type (a "show password" button).
    if kind == "password" or "data-rr-is-password" in attributes:
        return "password"
    return "typed" if kind in _MASKED_INPUT_TYPES else None


class _SimpleSelector:
    """A configured blocked selector, when it is one compound selector of tag, `#id` and `.class` parts.

    rrweb drops a blocked element's id and content, so a node that still matches by id, or by class and
    still has children, was not blocked by the recorder. Other selectors (attributes, combinators) are
    not matched here; their elements are checked through rrweb's placeholder marker only.
    """

    _PART = re.compile(r"([#.]?)([A-Za-z_][\w-]*)")

    def __init__(self, tag: str | None, ids: set[str], classes: set[str]) -> None:
        self.tag, self.ids, self.classes = tag, ids, classes

    @classmethod
    def parse(cls, selector: str) -> _SimpleSelector | None:
        text, tag, ids, classes = selector.strip(), None, set(), set()
        position = 0
        while position < len(text):
            match = cls._PART.match(text, position)
            if match is None:
                return None
            prefix, name = match.groups()
            if prefix == "#":
                ids.add(name)
            elif prefix == ".":
                classes.add(name)
            elif position == 0:
                tag = name.lower()
            else:
                return None
            position = match.end()
        return cls(tag, ids, classes) if text else None

    def matches(self, node: dict, attributes: dict) -> bool:
        if self.tag is not None and str(node.get("tagName", "")).lower() != self.tag:
            return False
        if self.ids and attributes.get("id") not in self.ids:
            return False
        return self.classes <= set(str(attributes.get("class", "")).split())


class _PrivacyCheck:
    """Walks a chunk's events in order, learning the nodes its snapshots name (by rrweb node id)."""

    def __init__(self, inputs_allowed: bool, selectors: list[_SimpleSelector | None]) -> None:
        self.inputs_allowed = inputs_allowed
        self.selectors = [s for s in selectors if s is not None]
        self.kinds: dict[int, str] = {}  # node id -> `password` / `typed`, for the inputs seen in this chunk
        self.blocked: set[int] = set()  # ids of the placeholders seen in this chunk

    def _private(self, kind: str | None) -> bool:
        return kind == "password" or (kind == "typed" and not self.inputs_allowed)

    def _refuse(self, path: str, kind: str | None) -> None:
        what = "password" if kind == "password" else "input value; this environment records no input values"
        raise ChunkError(400, path, f"unmasked {what}")

    def run(self, events: list[RrwebEvent]) -> None:
        for i, event in enumerate(events):
            data, path = event.data, f"$[{i}].data"
            if event.type == FULL_SNAPSHOT:
                # A new page: rrweb numbers its nodes afresh.
                self.kinds.clear()
                self.blocked.clear()
                self._node(data.get("node"), f"{path}.node")
            elif event.type == INCREMENTAL and data.get("source") == MUTATION:
                self._mutation(data, path)
            elif event.type == INCREMENTAL and data.get("source") == INPUT:
                kind = self.kinds.get(data.get("id"))  # type: ignore[arg-type]
                if self._private(kind) and not _masked(data.get("text")):
                    self._refuse(f"{path}.text", kind)

    def _mutation(self, data: dict, path: str) -> None:
        for i, added in _dicts(data.get("adds")):
            if added.get("parentId") in self.blocked:
                raise ChunkError(400, f"{path}.adds[{i}].parentId", "a node added into a blocked element")
            self._node(added.get("node"), f"{path}.adds[{i}].node")
        for i, text in _dicts(data.get("texts")):
            if text.get("id") in self.blocked:
                raise ChunkError(400, f"{path}.texts[{i}]", "text of a blocked element")
        for i, change in _dicts(data.get("attributes")):
            attributes = change.get("attributes")
            if not isinstance(attributes, dict):
                continue
            kind = self.kinds.get(change.get("id"))  # type: ignore[arg-type]
            if "value" in attributes and self._private(kind) and not _masked(attributes["value"]):
                self._refuse(f"{path}.attributes[{i}].attributes.value", kind)
            if change.get("id") in self.blocked and set(attributes) - PLACEHOLDER_ATTRIBUTES:
                raise ChunkError(400, f"{path}.attributes[{i}].attributes", "attributes of a blocked element")

    def _is_placeholder(self, node: dict, attributes: dict) -> bool:
        if "rr_width" in attributes or "rr_height" in attributes:
            return True
        if BLOCK_CLASS in str(attributes.get("class", "")).split():
            return True
        return any(s.matches(node, attributes) for s in self.selectors)

    def _node(self, root: object, path: str) -> None:
        # Iterative: a page's DOM can be deeper than Python's recursion limit.
        stack = [(root, path)]
        while stack:
            node, where = stack.pop()
            if not isinstance(node, dict):
                continue
            attributes = node.get("attributes")
            children = node.get("childNodes") or []
            if node.get("type") == ELEMENT_NODE and isinstance(attributes, dict):
                node_id = node.get("id")
                if self._is_placeholder(node, attributes):
                    if children:
                        raise ChunkError(400, f"{where}.childNodes", "a blocked element must not carry its content")
                    extra = sorted(set(attributes) - PLACEHOLDER_ATTRIBUTES)
                    if extra:
                        raise ChunkError(
                            400, f"{where}.attributes.{extra[0]}", "a blocked element keeps only its class and size"
                        )
                    if isinstance(node_id, int):
                        self.blocked.add(node_id)
                    continue
                kind = _input_kind(node)
                if kind is not None and isinstance(node_id, int):
                    self.kinds[node_id] = kind
                if self._private(kind) and not _masked(attributes.get("value")):
                    self._refuse(f"{where}.attributes.value", kind)
            for i, child in enumerate(children if isinstance(children, list) else []):
                stack.append((child, f"{where}.childNodes[{i}]"))


def _dicts(items: object) -> list[tuple[int, dict]]:
    """The objects of a JSON list, with their positions in it (for the error's path)."""
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)] if isinstance(items, list) else []
