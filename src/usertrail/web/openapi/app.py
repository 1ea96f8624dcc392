"""Liveness of the server process."""

from __future__ import annotations

import msgspec

from usertrail.web.openapi.model import PUBLIC, Op

TAG = "Server"


class Health(msgspec.Struct):
    status: str


OPERATIONS = [Op("GET", "/health", 'The server is up (`{"status": "ok"}`)', auth=PUBLIC, response=Health)]
