"""What our SCIM 2.0 service provider announces and accepts (RFC 7643/7644), built on scim2-server.

scim2-server's `ScimService` does the protocol: request validation, PATCH, filters, ETags and
preconditions, discovery and error bodies. This module configures it once for the process:

- one resource type, `User` at `/Users`, with the enterprise extension;
- the capabilities in `ServiceProviderConfig` (no bulk, no password change, index pagination);
- the tolerances real identity providers need (`POLICY`, `normalize_patch`).
"""

from __future__ import annotations

from typing import Any

import msgspec
from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    Context,
    ETag,
    Filter,
    Pagination,
    Patch,
    Resource,
    ResponseParameters,
    ScimPolicy,
    ScimProvider,
    ServiceProviderConfig,
    Sort,
)
from scim2_server.responses import ScimResponse
from scim2_server.service import ScimService
from scim2_server.utils import load_default_resource_types, load_default_schemas

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
MAX_RESULTS = 1000  # per search page (filter.maxResults and pagination.maxPageSize)
DEFAULT_PAGE_SIZE = 100  # a search without `count`
MAX_BODY_BYTES = 1024 * 1024

# Microsoft Entra removes a value with `remove` + `value`, and adds to a filtered path that matches
# nothing (`emails[type eq "work"].value` on a user without a work email) to create that entry.
POLICY = ScimPolicy(
    remove_value_as_filter=ScimPolicy.RemoveValue.apply,
    unmatched_path_filter=ScimPolicy.UnmatchedPathFilter.create,
)


def service_provider_config() -> ServiceProviderConfig:
    """The capabilities we announce; the storage implements each of them."""
    return ServiceProviderConfig(
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=True),
        etag=ETag(supported=True),
        pagination=Pagination(
            cursor=False,
            index=True,
            default_pagination_method=Pagination.DefaultPaginationMethod.index,
            default_page_size=DEFAULT_PAGE_SIZE,
            max_page_size=MAX_RESULTS,
        ),
        authentication_schemes=[
            AuthenticationScheme(
                type=AuthenticationScheme.Type.oauthbearertoken,
                name="OAuth Bearer Token",
                description="The project's SCIM token (POST /api/projects/{id}/integrations/scim/token)",
                primary=True,
            )
        ],
    )


def build_provider() -> ScimProvider:
    """The User resource type with the enterprise extension, from RFC 7643's published schemas.

    The models are built from the schema documents (§8.7) rather than scim2-models' `User` class:
    the documents mark `manager.value` and `manager.$ref` optional, and Okta and Entra send a
    manager without `$ref`, which the class refuses.
    """
    schemas = [s for s in load_default_schemas().values() if s.id in (USER_SCHEMA, ENTERPRISE_SCHEMA)]
    resource_types = [load_default_resource_types()["User"]]
    return ScimProvider.from_discovery(schemas, resource_types, config=service_provider_config(), policy=POLICY)


class UsertrailScimService(ScimService):
    """scim2-server's service, answering a PATCH with the resource.

    RFC 7644 §3.5.2 allows 200 with the resource or 204; Okta expects the user back.
    """

    def patch_response(
        self, base_url: str, resource: Resource[Any], response_parameters: ResponseParameters[Any]
    ) -> ScimResponse:
        return self.resource_response(
            self.publish(base_url, resource), Context.RESOURCE_REPLACEMENT_RESPONSE, response_parameters
        )


SERVICE = UsertrailScimService(build_provider())
USER_TYPE = SERVICE.get_resource_type("User")
USER_MODEL: type[Resource[Any]] = SERVICE.get_model(USER_TYPE)


def normalize_patch(body: bytes) -> bytes:
    """Rewrite the manager values Microsoft Entra sends into the form RFC 7643 defines.

    Entra sets a manager with `"value": "<id>"` or `"value": [{"$ref": null, "value": "<id>"}]`
    where the schema wants `{"value": "<id>"}`. Anything else (including JSON that does not
    parse, which the service refuses with its own error) is passed on unchanged.
    """
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body
    operations = document.get("Operations") if isinstance(document, dict) else None
    if not isinstance(operations, list):
        return body
    changed = False
    for operation in operations:
        if not isinstance(operation, dict) or not isinstance(operation.get("path"), str):
            continue
        path = operation["path"].lower()
        if path not in ("manager", f"{ENTERPRISE_SCHEMA.lower()}:manager") or "value" not in operation:
            continue
        value = operation["value"]
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, str):
            value = {"value": value}
        if isinstance(value, dict) and value.get("$ref", "") is None:
            value = {k: v for k, v in value.items() if k != "$ref"}
        if value is not operation["value"]:
            operation["value"] = value
            changed = True
    return msgspec.json.encode(document) if changed else body
