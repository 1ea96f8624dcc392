"""SCIM 2.0 provisioning (RFC 7643/7644) of end users' attributes from an identity provider, and its settings
(docs/scim.md). The SCIM endpoint itself is described by its own discovery resources
(`/scim/v2/{project_id}/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas`)."""

from __future__ import annotations

import msgspec

from usertrail.web.openapi.model import SCIM, JSONObject, Op

TAG = "SCIM"


class ScimSettings(msgspec.Struct):
    """The user id attribute and the attribute mapping, the SCIM base URL, and the provisioned user count."""

    base_url: str
    users: int
    user_id_attributes: list[str]
    default_mapping: list[JSONObject]


class ScimToken(msgspec.Struct):
    token: str
    base_url: str


class Revoked(msgspec.Struct):
    revoked: bool


_BASE = "/api/projects/{project_id}/integrations/scim"
_SCIM = "/scim/v2/{project_id}"
_SCIM_ERRORS = {
    400: "a SCIM error (`application/scim+json`, RFC 7644 §3.12: `status`, `scimType`, `detail`)",
    401: "a SCIM error: no valid SCIM token",
    404: "a SCIM error: no such resource or base URL",
    413: "a SCIM error: the body is over the limit",
}


def _scim_ops(path: str, what: str) -> list[Op]:
    return [
        Op(
            method,
            path,
            f"SCIM 2.0 {method} {what}",
            auth=SCIM,
            body=JSONObject if method in ("POST", "PUT", "PATCH") else None,
            body_media="application/scim+json",
            response=JSONObject if method != "DELETE" else None,
            response_media="application/scim+json",
            status=204 if method == "DELETE" else 200,
            errors=_SCIM_ERRORS,
            description="Users (`/Users`, `/Users/{id}`: list with filters and paging, create, replace, PATCH, "
            "delete) and discovery (`/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas`); see docs/scim.md.",
        )
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
    ]


OPERATIONS = [
    Op(
        "GET",
        _BASE,
        "SCIM settings, base URL and provisioned user count",
        permission="integrations.manage",
        response=ScimSettings,
    ),
    Op(
        "PUT",
        _BASE,
        "Set `user_id_attribute` and/or `mapping` (the whole list)",
        permission="integrations.manage",
        body=JSONObject,
        response=JSONObject,
        errors={
            409: "scim_users_exist: the user id attribute cannot change while SCIM users exist, or "
            "uuid_settings_required"
        },
    ),
    Op(
        "POST",
        _BASE + "/token",
        "Create or rotate the SCIM token (shown only here)",
        permission="integrations.manage",
        response=ScimToken,
        status=201,
        errors={409: "uuid_settings_required: every environment's identification provider is `none`"},
    ),
    Op(
        "DELETE",
        _BASE + "/token",
        "Revoke the SCIM token",
        permission="integrations.manage",
        response=Revoked,
        errors={404: "not_found: the project has no SCIM token (`token`)"},
    ),
    *_scim_ops(_SCIM, "on the base URL"),
    *_scim_ops(_SCIM + "/{path}", "on a resource"),
]
