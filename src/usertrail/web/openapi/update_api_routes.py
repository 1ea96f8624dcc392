"""The End User Update API (WalkMe-shaped): OAuth2 client credentials, then updates of end users' custom
attributes by record; and its administration: API clients and the integration log (docs/integrations.md)."""

from __future__ import annotations

from typing import Any

import msgspec

from usertrail.web.openapi.model import BEFORE, UPDATE_API, UPDATE_API_CLIENT, JSONObject, Op, Param, limit

TAG = "End User Update API"


class FieldMapping(msgspec.Struct):
    payload: str
    name: str
    type: str


class ClientSpec(msgspec.Struct):
    """A new API client: which record property holds the user id, and how payload fields map to attributes."""

    name: str
    user_id_property: str
    fields: list[FieldMapping]


class ApiClient(msgspec.Struct):
    client_id: str
    name: str
    user_id_property: str
    fields: list[FieldMapping]
    created_at: int
    revoked_at: int | None
    status: str


class NewApiClient(ApiClient):
    """The new client with its secret (shown only here) and the URLs it calls."""

    client_secret: str = ""
    token_url: str = ""
    update_url: str = ""
    warnings: list[str] = []


class ApiClients(msgspec.Struct):
    clients: list[ApiClient]


class IntegrationLogPage(msgspec.Struct):
    entries: list[JSONObject]
    next_before: str | None


class TokenRequest(msgspec.Struct):
    """Form fields (`application/x-www-form-urlencoded`); the client may authenticate with HTTP Basic instead."""

    grant_type: str
    client_id: str | None = None
    client_secret: str | None = None


class AccessToken(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int
    scope: str


class OAuthError(msgspec.Struct):
    """RFC 6749 error answer of the token endpoint."""

    error: str
    error_description: str


class UpdateRecords(msgspec.Struct):
    """Up to 100 records; each names the end user by the client's user id property, plus attribute fields."""

    records: list[dict[str, Any]]


class UpdateAccepted(msgspec.Struct):
    message: str
    request_id: str
    records: int
    records_applied: int
    error_count: int
    result_url: str


_UUID = {409: "uuid_settings_required: every environment's identification provider is `none`"}

OPERATIONS = [
    Op(
        "POST",
        "/api/projects/{project_id}/integrations/api-clients",
        "Create an Update API client (secret shown once)",
        permission="integrations.manage",
        body=ClientSpec,
        response=NewApiClient,
        status=201,
        errors={**_UUID, 409: "name_taken (`$.name`) or uuid_settings_required"},
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/integrations/api-clients",
        "The project's Update API clients",
        permission="integrations.manage",
        response=ApiClients,
    ),
    Op(
        "DELETE",
        "/api/projects/{project_id}/integrations/api-clients/{client_id}",
        "Revoke an API client (its tokens stop working)",
        permission="integrations.manage",
        response=ApiClient,
    ),
    Op(
        "GET",
        "/api/projects/{project_id}/integrations/log",
        "The integration log, newest first",
        permission="integrations.manage",
        query=(
            Param("integration", "an integration name or API client id"),
            Param("kind", "only this kind of entry"),
            limit(),
            BEFORE,
        ),
        response=IntegrationLogPage,
    ),
    Op(
        "POST",
        "/accounts/connect/token",
        "An access token for an Update API client (OAuth2 client credentials)",
        auth=UPDATE_API_CLIENT,
        body=TokenRequest,
        body_media="application/x-www-form-urlencoded",
        response=AccessToken,
        errors={
            400: "OAuth2 `invalid_request`/`unsupported_grant_type` (body: OAuthError)",
            401: "OAuth2 `invalid_client` (body: OAuthError)",
        },
    ),
    Op(
        "POST",
        "/public/v1/user/data",
        "Apply up to 100 records to end users' custom attributes; 202 once written",
        auth=UPDATE_API,
        query=(Param("Idempotency-Key", "repeat-safe retries", where="header"),),
        body=UpdateRecords,
        response=UpdateAccepted,
        status=202,
        errors={
            401: "unauthorized: no valid access token",
            409: "the Idempotency-Key was used with another body, or its first call is still running",
            413: "payload_too_large: the body is over the limit",
            429: "rate_limited: too many calls of this client; retry after `Retry-After`",
        },
    ),
    Op(
        "GET",
        "/public/v1/user/data/requests/{request_id}",
        "The result of one update call: counts and every error by record and field",
        auth=UPDATE_API,
        response=JSONObject,
        errors={401: "unauthorized: no valid access token"},
    ),
]
