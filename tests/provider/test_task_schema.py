"""Which output schemas a job may ask for (stream_app.provider.task_schema): pure, no Kafka."""

from __future__ import annotations

from typing import Any

import pytest

from stream_app.provider.task_schema import UnsupportedSchema, api_schema, check_output_schema

TICKET: dict[str, Any] = {
    "type": "object",
    "properties": {
        "product_area": {"type": "string"},
        "urgency": {"type": "string", "enum": ["low", "medium", "high"]},
        "refund_requested": {"type": "boolean"},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "owner": {"anyOf": [{"$ref": "#/$defs/person"}, {"type": "null"}]},
    },
    "required": ["product_area", "urgency", "refund_requested"],
    "additionalProperties": False,
    "$defs": {
        "person": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "email": {"type": "string", "format": "email"},
            },
        }
    },
}


def test_a_schema_within_the_subset_is_accepted() -> None:
    check_output_schema(TICKET)


def test_constraints_the_api_does_not_enforce_move_into_descriptions() -> None:
    sent = api_schema(TICKET)
    rating = sent["properties"]["rating"]
    assert "minimum" not in rating and "{minimum: 1, maximum: 5}" in rating["description"]
    assert sent["additionalProperties"] is False


def _with(**node: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"x": node}, "required": ["x"]}


@pytest.mark.parametrize(
    ("schema", "keyword", "path"),
    [
        ({"type": "string"}, "type", "/"),
        ({"type": "array", "items": {"type": "string"}}, "type", "/"),
        (_with(type="string", patternProperties={}), "patternProperties", "/properties/x"),
        (_with(type="object", additionalProperties=True), "additionalProperties", "/properties/x"),
        (
            _with(type="object", additionalProperties={"type": "string"}),
            "additionalProperties",
            "/properties/x",
        ),
        (_with(type=["string", "null"]), "type", "/properties/x"),
        (_with(type="string", **{"if": {"type": "string"}}), "if", "/properties/x"),
        (_with(type="array", prefixItems=[{"type": "string"}]), "prefixItems", "/properties/x"),
        (_with(**{"not": {"type": "string"}}), "not", "/properties/x"),
        (_with(description="no type"), "type", "/properties/x"),
        (_with(enum=[{"a": 1}]), "enum", "/properties/x"),
        (_with(**{"$ref": "https://example.com/s.json"}), "$ref", "/properties/x"),
        (_with(**{"$ref": "#/$defs/missing"}), "$ref", "/properties/x"),
        (_with(type="strin"), "type", "/properties/x"),
        ({"type": "object", "properties": {"metadata": {"type": "string"}}}, "properties", None),
        ({"type": "object", "properties": "nope"}, "properties", "/"),
    ],
)
def test_unsupported_keywords_are_named(
    schema: dict[str, Any], keyword: str, path: str | None
) -> None:
    with pytest.raises(UnsupportedSchema) as caught:
        check_output_schema(schema)
    assert caught.value.keyword == keyword, str(caught.value)
    if path is not None:
        assert caught.value.path == path
    assert keyword in str(caught.value)


def test_recursive_schemas_are_refused() -> None:
    schema = {
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/node"}},
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            }
        },
    }
    with pytest.raises(UnsupportedSchema, match="recursive"):
        check_output_schema(schema)


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {
            "type": "object",
            "properties": {"n": schema},
            "required": ["n"],
            "additionalProperties": False,
        }
    return schema


def test_deep_nesting_is_refused_before_any_recursive_check() -> None:
    check_output_schema(_nested(20))
    for levels in (40, 100, 5000):  # 5000 would exhaust the stack of a recursive check
        with pytest.raises(UnsupportedSchema) as refused:
            check_output_schema(_nested(levels))
        assert "nested deeper than" in str(refused.value)


def test_required_must_name_declared_properties() -> None:
    schema = {**TICKET, "required": ["product_area", "zzz"]}
    with pytest.raises(UnsupportedSchema) as refused:
        check_output_schema(schema)
    assert refused.value.keyword == "required" and "'zzz'" in str(refused.value)
