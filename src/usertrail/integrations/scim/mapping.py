"""Which SCIM attributes become which custom attributes, and which one is the end-user id.

A mapping entry names a SCIM attribute path as RFC 7644 §3.10 writes it (`title`,
`name.givenName`, `emails[type eq "work"].value`,
`urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department`), the attribute name it
is stored under, and its type. A path that selects several values (`emails.value` of a user
with two emails) gives the primary entry's value, or else the first entry's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from scim2_models import BaseModel, Path, Resource, SCIMException

from usertrail.integrations.scim.protocol import ENTERPRISE_SCHEMA, USER_MODEL, USER_SCHEMA
from usertrail.integrations.update_api import InvalidRequest
from usertrail.profiles.custom import ATTRIBUTE_TYPES, CAP, check_name, user_id_text

DEFAULT_USER_ID_ATTRIBUTE = "userName"
USER_ID_ATTRIBUTES = ("userName", "externalId")


@dataclass(frozen=True)
class AttributeMap:
    path: str  # SCIM attribute path
    name: str  # the custom attribute it is stored as
    type: str

    def as_json(self) -> dict:
        return {"path": self.path, "name": self.name, "type": self.type}


DEFAULT_MAPPING: tuple[AttributeMap, ...] = (
    AttributeMap("userName", "userName", "string"),
    AttributeMap("displayName", "displayName", "string"),
    AttributeMap("name.givenName", "firstName", "string"),
    AttributeMap("name.familyName", "lastName", "string"),
    AttributeMap("name.formatted", "fullName", "string"),
    AttributeMap("emails.value", "email", "string"),
    AttributeMap("title", "title", "string"),
    AttributeMap("active", "active", "boolean"),
    AttributeMap(f"{ENTERPRISE_SCHEMA}:department", "department", "string"),
    AttributeMap(f"{ENTERPRISE_SCHEMA}:employeeNumber", "employeeNumber", "string"),
    AttributeMap(f"{ENTERPRISE_SCHEMA}:costCenter", "costCenter", "string"),
    AttributeMap(f"{ENTERPRISE_SCHEMA}:organization", "organization", "string"),
    AttributeMap(f"{ENTERPRISE_SCHEMA}:division", "division", "string"),
    AttributeMap(f"{ENTERPRISE_SCHEMA}:manager.value", "manager", "string"),
)


def _path(text: str) -> Path:
    return Path[USER_MODEL](text)  # type: ignore[valid-type]


def check_path(text: object, where: str) -> str:
    """A SCIM path naming one simple (or sub-) attribute of the User resource; InvalidRequest otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("expected a SCIM attribute path such as `name.givenName`", where)
    try:
        path = _path(text)
        binding = path.resolve()
    except SCIMException as exc:
        raise InvalidRequest(f"{text!r} is not a SCIM attribute path: {exc.detail}", where) from None
    if binding is None:
        raise InvalidRequest(f"the User resource has no attribute {text!r}", where)
    target = binding.target_type
    if isinstance(target, type) and issubclass(target, BaseModel):
        raise InvalidRequest(
            f"{text!r} is a complex attribute: name one of its sub-attributes (e.g. {text}.value)", where
        )
    return text


def read_value(resource: Resource[Any], text: str) -> object:
    """The value at a SCIM path: one value (the primary or first entry's when the path selects several), or None."""
    path = _path(text)
    value = path.get(resource, strict=False)
    if isinstance(value, list):
        binding = path.resolve()
        if binding is not None and binding.is_multivalued and binding.sub_field_name:
            value = _primary_value(resource, path, binding.sub_field_name)
        else:
            value = value[0] if value else None
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def _primary_value(resource: Resource[Any], path: Path, sub_field: str) -> object:
    """The sub-attribute of the selected entry marked primary, else of the first selected entry."""
    head = str(path)[: -(len(path.parts[-1]) + 1)]  # `emails[type eq "work"]` from `emails[type eq "work"].value`
    entries = _path(head).get(resource, strict=False)
    if not isinstance(entries, list) or not entries:
        return None
    chosen = next((e for e in entries if getattr(e, "primary", None) is True), entries[0])
    return getattr(chosen, sub_field, None)


@dataclass(frozen=True)
class ScimMapping:
    """The end-user id attribute and the attribute mapping of one project."""

    user_id_attribute: str
    fields: tuple[AttributeMap, ...]

    @property
    def types(self) -> dict[str, str]:
        return {f.name: f.type for f in self.fields}

    def user_id(self, resource: Resource[Any]) -> str:
        """The usertrail end-user id of a SCIM user, always a string; raises ValueError."""
        value = read_value(resource, self.user_id_attribute)
        if value is None:
            raise ValueError(f"{self.user_id_attribute} is required: it is this project's usertrail end-user id")
        try:
            return user_id_text(value)
        except ValueError as exc:
            raise ValueError(f"{self.user_id_attribute} cannot be the usertrail end-user id: {exc}") from None

    def values(self, resource: Resource[Any]) -> dict[str, object]:
        """Every mapped attribute's value in a SCIM user (None where the user has none)."""
        return {f.name: read_value(resource, f.path) for f in self.fields}

    def active_names(self) -> list[str]:
        """The attributes `active` is mapped to (set to false when a SCIM user is deleted)."""
        return [f.name for f in self.fields if f.path.lower() in ("active", f"{USER_SCHEMA.lower()}:active")]


def parse_mapping(raw: object, where: str = "$.mapping") -> tuple[AttributeMap, ...]:
    """Validate `[{path, name, type}, ...]`; every refusal names the field path."""
    if not isinstance(raw, list):
        raise InvalidRequest("mapping must be a list of {path, name, type}", where)
    if len(raw) > CAP:
        raise InvalidRequest(f"at most {CAP} mappings (the project's attribute cap)", where)
    fields: list[AttributeMap] = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise InvalidRequest("expected an object {path, name, type}", at)
        for key in entry:
            if key not in ("path", "name", "type"):
                raise InvalidRequest(f"unknown field {key!r}: expected path, name and type", f"{at}.{key}")
        path = check_path(entry.get("path"), f"{at}.path")
        name = entry.get("name")
        problem = check_name(name)
        if problem:
            raise InvalidRequest(problem, f"{at}.name")
        if name in names:
            raise InvalidRequest(f"the attribute name {name!r} is mapped twice", f"{at}.name")
        names.add(name)
        type_ = entry.get("type")
        if type_ not in ATTRIBUTE_TYPES:
            raise InvalidRequest(f"type must be one of {', '.join(ATTRIBUTE_TYPES)}", f"{at}.type")
        fields.append(AttributeMap(path, name, type_))
    return tuple(fields)


def parse_user_id_attribute(raw: object, where: str = "$.user_id_attribute") -> str:
    if raw not in USER_ID_ATTRIBUTES:
        raise InvalidRequest(f"user_id_attribute must be one of {', '.join(USER_ID_ATTRIBUTES)}", where)
    return str(raw)
