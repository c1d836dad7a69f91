"""Which output schemas a job may ask for: the JSON Schema subset structured outputs accept.

Pure functions, checked at submit time (422 before anything is produced to Kafka) and
again when a worker prepares a task. The rules follow the API's structured outputs
(`output_config.format` json_schema) as the `anthropic` SDK's `transform_schema` encodes
them:

- structural keywords the API enforces: `type` (one of object, array, string, integer,
  number, boolean, null), `properties`, `required`, `additionalProperties: false`,
  `items`, `enum` and `const` of primitive values, `anyOf`, `oneOf` (sent as anyOf),
  `allOf`, local `$ref` into `$defs`/`definitions`, string `format`s of a fixed list,
  `minItems` of 0 or 1;
- value constraints the API does not enforce (`minimum`, `maximum`, `maxLength`,
  `pattern`, `maxItems`, ...): accepted; the SDK moves them into the description the model
  reads, and this service validates every answer against the schema as submitted, so an
  answer that ignores them fails its record instead of passing unnoticed;
- everything else is refused, naming the keyword: conditionals (`if`/`then`/`else`,
  `not`, `dependent*`), `patternProperties`, `prefixItems`, `contains`, `unevaluated*`,
  `additionalProperties` other than false, type lists, external or recursive `$ref`.

The root must be an object schema (a record's `response` is an object) and must not
declare `metadata`, which the service adds to every response.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import anthropic
import jsonschema

from stream_app.core.exceptions import InsightStreamError

TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})
STRUCTURAL = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
        "format",
        "minItems",
    }
)
# Not enforced by the API: moved into the description by the SDK, enforced by our check.
ADVISORY = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "maxItems",
        "uniqueItems",
    }
)
ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "$schema"}
)
RESERVED_PROPERTIES = frozenset({"metadata"})


class UnsupportedSchema(InsightStreamError):
    """An output schema structured outputs cannot take; `keyword` names what is at fault
    and `path` where (JSON pointer)."""

    def __init__(self, keyword: str, path: str, why: str) -> None:
        where = path or "/"
        super().__init__(f"output_schema{where if where != '/' else ''}: {keyword}: {why}")
        self.keyword = keyword
        self.path = where


# Objects and lists nested deeper than this (about half as many levels of nested
# properties) are refused before any recursive check runs: jsonschema's own validator and
# the SDK's rewrite recurse, and a deep enough schema would exhaust Python's stack.
MAX_DEPTH = 64


def check_output_schema(schema: Mapping[str, Any]) -> None:
    """Raise UnsupportedSchema unless `schema` is a valid JSON Schema of an object that
    structured outputs accept (rules in the module docstring), nested at most MAX_DEPTH
    levels of JSON objects and arrays."""
    if _depth(schema) > MAX_DEPTH:
        raise UnsupportedSchema(
            "schema", "", f"nested deeper than {MAX_DEPTH} levels of objects and arrays"
        )
    try:
        jsonschema.Draft202012Validator.check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        where = list(exc.path)
        keyword = str(where.pop()) if where and isinstance(where[-1], str) else "schema"
        path = "".join(f"/{p}" for p in where)
        raise UnsupportedSchema(keyword, path, f"not a valid JSON Schema: {exc.message}") from None
    if schema.get("type") != "object":
        raise UnsupportedSchema("type", "", "the root must be {'type': 'object', ...}")
    for name in RESERVED_PROPERTIES & set(schema.get("properties", {})):
        raise UnsupportedSchema("properties", f"/properties/{name}", "is added by the service")
    for path, node in _nodes(schema, ""):
        _check_node(node, path, schema)
    _check_no_cycles(schema)
    try:
        anthropic.transform_schema(dict(schema))
    except ValueError as exc:  # the SDK's own last word on what it can send
        raise UnsupportedSchema("schema", "", str(exc)) from None


def api_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema as sent in `output_config.format` (the SDK's rewrite: constraints the API
    does not enforce move into descriptions, objects get additionalProperties false)."""
    return anthropic.transform_schema(dict(schema))


def _nodes(node: Any, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every subschema with its JSON pointer."""
    if not isinstance(node, Mapping):
        return
    yield path, node
    for key in ("properties", "$defs", "definitions"):
        children = node.get(key)
        if isinstance(children, Mapping):
            for name, child in children.items():
                yield from _nodes(child, f"{path}/{key}/{name}")
    items = node.get("items")
    if isinstance(items, Mapping):
        yield from _nodes(items, f"{path}/items")
    for key in ("anyOf", "oneOf", "allOf"):
        options = node.get(key)
        if isinstance(options, list):
            for i, option in enumerate(options):
                yield from _nodes(option, f"{path}/{key}/{i}")


def _check_node(node: Mapping[str, Any], path: str, root: Mapping[str, Any]) -> None:
    for keyword in node:
        if keyword not in STRUCTURAL | ADVISORY | ANNOTATIONS:
            raise UnsupportedSchema(keyword, path, "not supported by structured outputs")
    kind = node.get("type")
    if isinstance(kind, list):
        raise UnsupportedSchema(
            "type", path, "a list of types is not supported; use anyOf: [{type: ...}, ...]"
        )
    if kind is not None and kind not in TYPES:
        raise UnsupportedSchema("type", path, f"{kind!r} is not one of {sorted(TYPES)}")
    if kind is None and not {"anyOf", "oneOf", "allOf", "enum", "const", "$ref"} & node.keys():
        raise UnsupportedSchema("type", path, "every schema needs a type (or anyOf, enum, ...)")
    extra = node.get("additionalProperties")
    if extra is not None and extra is not False:
        raise UnsupportedSchema(
            "additionalProperties", path, "only false is supported (every key is declared)"
        )
    for keyword in ("enum", "const"):
        values = node.get(keyword) if keyword == "enum" else [node.get(keyword)]
        if keyword in node and not all(_primitive(v) for v in values or []):
            raise UnsupportedSchema(keyword, path, "only strings, numbers, booleans, null")
    ref = node.get("$ref")
    if ref is not None and not (
        isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/"))
    ):
        raise UnsupportedSchema("$ref", path, "only local references into $defs/definitions")
    if ref is not None and _resolve(root, ref) is None:
        raise UnsupportedSchema("$ref", path, f"{ref} does not exist")
    if path and "$schema" in node:
        raise UnsupportedSchema("$schema", path, "only allowed at the root")
    required = node.get("required")
    declared = node.get("properties")
    if isinstance(required, list) and isinstance(declared, Mapping):
        for name in required:
            if name not in declared:
                raise UnsupportedSchema(
                    "required", path, f"{name!r} is not one of the object's properties"
                )


def _depth(value: Any) -> int:
    """How many levels of dicts and lists `value` nests (iterative: no recursion limit)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, Mapping):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _resolve(root: Mapping[str, Any], ref: str) -> Mapping[str, Any] | None:
    target: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(target, Mapping):
            return None
        target = target.get(part.replace("~1", "/").replace("~0", "~"))
    return target if isinstance(target, Mapping) else None


def _check_no_cycles(root: Mapping[str, Any]) -> None:
    """Recursive schemas (a $ref reaching itself) are refused by structured outputs."""

    def refs_in(node: Mapping[str, Any]) -> set[str]:
        found = set()
        for _, sub in _nodes(node, ""):
            ref = sub.get("$ref")
            if isinstance(ref, str):
                found.add(ref)
        return found

    def visit(ref: str, trail: tuple[str, ...]) -> None:
        if ref in trail:
            raise UnsupportedSchema("$ref", ref[1:], "recursive schemas are not supported")
        target = _resolve(root, ref)
        if target is not None:
            for inner in refs_in(target):
                visit(inner, (*trail, ref))

    body = {k: v for k, v in root.items() if k not in ("$defs", "definitions")}
    for ref in refs_in(body):
        visit(ref, ())
