"""Synthetic rrweb recordings for tests and benchmarks: shop-like pages and human-paced activity.

The events follow rrweb 2's format as its recorder writes it (Meta, FullSnapshot, then incremental
mouse moves, clicks, scrolls and DOM mutations, each mutation adding one node at a time), so the
replayer handles them like a real recording. Seeded, so the same arguments give the same events.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

META, FULL_SNAPSHOT, INCREMENTAL = 4, 2, 3
MUTATION, MOUSE_MOVE, MOUSE_INTERACTION, SCROLL = 0, 1, 2, 3
CLICK = 2

STYLE = (
    "body { font-family: sans-serif; margin: 0 } header { background: #234; color: #fff; padding: 8px }"
    " .grid { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; padding: 12px }"
    " .card { border: 1px solid #ccc; padding: 8px } .card.hot { border-color: #c36 }"
)


@dataclass
class _Ids:
    next_id: int = 1

    def take(self) -> int:
        self.next_id += 1
        return self.next_id - 1


@dataclass
class Page:
    """A serialized page and the ids the activity refers to."""

    snapshot: dict
    buttons: list[int] = field(default_factory=list)
    items_id: int = 0
    cart_text_id: int = 0


def _el(ids: _Ids, tag: str, attributes: dict | None = None, children: list | None = None) -> dict:
    return {"type": 2, "tagName": tag, "attributes": attributes or {}, "childNodes": children or [], "id": ids.take()}


def _text(ids: _Ids, text: str) -> dict:
    return {"type": 3, "textContent": text, "id": ids.take()}


def shop_page(ids: _Ids, title: str, cards: int, extra_body: list[dict] | None = None) -> Page:
    """A page like bench/playback.py's shop: a header with a cart count, a list, a grid of product cards."""
    page = Page(snapshot={})
    doc_id = ids.take()
    cart = _text(ids, "Cart (0)")
    page.cart_text_id = cart["id"]
    items = _el(ids, "ul", {"id": "items"})
    page.items_id = items["id"]
    grid = []
    for i in range(cards):
        button = _el(ids, "button", {"class": "add"}, [_text(ids, "Add to cart")])
        page.buttons.append(button["id"])
        grid.append(
            _el(
                ids,
                "div",
                {"class": "card", "id": f"p{i}"},
                [
                    _el(ids, "h3", {}, [_text(ids, f"Product {i}")]),
                    _el(ids, "p", {}, [_text(ids, f"Sturdy item number {i}, ships in {i % 5 + 1} days.")]),
                    _el(ids, "span", {"class": "price"}, [_text(ids, f"{9 + i}.99 €")]),
                    button,
                ],
            )
        )
    title_el = _el(ids, "title", {}, [_text(ids, title)])
    head = _el(ids, "head", {}, [title_el, _el(ids, "style", {}, [_text(ids, STYLE)])])
    body = _el(
        ids,
        "body",
        {},
        [
            _el(ids, "header", {}, [_text(ids, "Shop "), _el(ids, "span", {"id": "cart"}, [cart])]),
            *(extra_body or []),
            items,
            _el(ids, "div", {"class": "grid"}, grid),
        ],
    )
    page.snapshot = {
        "type": 0,
        "id": doc_id,
        "childNodes": [
            {"type": 1, "name": "html", "publicId": "", "systemId": "", "id": ids.take()},
            _el(ids, "html", {"lang": "en"}, [head, body]),
        ],
    }
    return page


def synthetic_recording(
    start_ts: int,
    minutes: float,
    *,
    pages: int = 1,
    cards: int = 60,
    seed: int = 1,
    width: int = 1280,
    height: int = 720,
    idle_from_s: float | None = None,
    idle_s: float = 0.0,
    extra_body: list[dict] | None = None,
) -> list[dict]:
    """`minutes` of activity on `pages` pages (a page change at equal intervals), about 10 events/s.

    Mouse moves (batched positions), clicks on "Add to cart" (each adds a list item and changes the
    cart text), wheel scrolls. `idle_from_s`/`idle_s` leave a gap without events (inactivity).
    `extra_body` nodes (serialized, with ids from 10**6 up) go at the top of every page's body.
    """
    rng = random.Random(seed)
    end = start_ts + int(minutes * 60_000)
    page_ms = (end - start_ts) // pages
    events: list[dict] = []
    ts = start_ts
    for n in range(pages):
        ids = _Ids()
        page = shop_page(ids, f"Shop page {n + 1}", cards, extra_body)
        page_end = end if n == pages - 1 else start_ts + (n + 1) * page_ms
        href = f"https://shop.example.com/page/{n + 1}"
        events.append({"type": META, "data": {"href": href, "width": width, "height": height}, "timestamp": ts})
        events.append(
            {
                "type": FULL_SNAPSHOT,
                "data": {"node": page.snapshot, "initialOffset": {"left": 0, "top": 0}},
                "timestamp": ts + 1,
            }
        )
        events.extend(_activity(rng, ids, page, ts + 2, page_end, width, height, idle_from_s, idle_s, start_ts))
        ts = page_end
    return events


def _activity(
    rng: random.Random,
    ids: _Ids,
    page: Page,
    ts: int,
    end: int,
    width: int,
    height: int,
    idle_from_s: float | None,
    idle_s: float,
    origin: int,
) -> Iterator[dict]:
    added = 0
    scroll = 0
    x, y = width // 2, height // 2
    idle_start = None if idle_from_s is None else origin + int(idle_from_s * 1000)
    while ts < end:
        if idle_start is not None and idle_start <= ts < idle_start + idle_s * 1000:
            ts = idle_start + int(idle_s * 1000)
            continue
        roll = rng.random()
        if roll < 0.70:
            positions = []
            for k in range(rng.randint(3, 8)):
                x = max(0, min(width - 1, x + rng.randint(-60, 60)))
                y = max(0, min(height - 1, y + rng.randint(-40, 40)))
                positions.append({"x": x, "y": y, "id": page.buttons[0], "timeOffset": -50 * k})
            yield {"type": INCREMENTAL, "data": {"source": MOUSE_MOVE, "positions": positions}, "timestamp": ts}
        elif roll < 0.80:
            target = rng.choice(page.buttons)
            yield {
                "type": INCREMENTAL,
                "data": {"source": MOUSE_INTERACTION, "type": CLICK, "id": target, "x": x, "y": y},
                "timestamp": ts,
            }
            added += 1
            li = _el(ids, "li")
            text = _text(ids, f"Added product {target}")
            yield {
                "type": INCREMENTAL,
                "data": {
                    "source": MUTATION,
                    "texts": [{"id": page.cart_text_id, "value": f"Cart ({added})"}],
                    "attributes": [],
                    "removes": [],
                    "adds": [
                        {"parentId": page.items_id, "nextId": None, "node": li},
                        {"parentId": li["id"], "nextId": None, "node": text},
                    ],
                },
                "timestamp": ts + 5,
            }
        else:
            scroll = max(0, scroll + rng.choice((-1, 1, 1)) * rng.randint(80, 400))
            yield {"type": INCREMENTAL, "data": {"source": SCROLL, "id": 1, "x": 0, "y": scroll}, "timestamp": ts}
        ts += rng.randint(30, 170)


def chunks_of(events: list[dict], chunk_ms: int = 5000) -> list[list[dict]]:
    """The events cut as the snippet sends them: one chunk per `chunk_ms` of recording."""
    out: list[list[dict]] = []
    start = events[0]["timestamp"] if events else 0
    current = None
    for event in events:
        slot = (event["timestamp"] - start) // chunk_ms
        if slot != current:
            out.append([])
            current = slot
        out[-1].append(event)
    return out
