"""Anthropic Messages API wire shapes: request parsing, token estimates, reply bodies."""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from simulator.generate import fit_schema, plain_reply

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    405: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class InvalidRequest(Exception):
    """The request cannot be served; the message is returned as an invalid_request_error."""


@dataclass(frozen=True)
class MessagesRequest:
    """What the simulator needs from a /v1/messages (or count_tokens) body."""

    model: str
    max_tokens: int | None
    user_text: str
    input_tokens: int
    output_schema: Mapping[str, Any] | None
    forced_tool: Mapping[str, Any] | None
    # The prefix marked cache_control (none: 0 and None): its tokens and an id of its content.
    cache_prefix_tokens: int = 0
    cache_key: str | None = None
    # The marked prefix asks for the 1-hour cache (`cache_control.ttl` "1h").
    cache_ttl_1h: bool = False


@dataclass(frozen=True)
class Reply:
    content: list[dict[str, Any]]
    stop_reason: str
    output_tokens: int


@dataclass(frozen=True)
class CacheUsage:
    """Prompt-cache tokens a reply reports (and bills) besides its input tokens."""

    write_5m: int = 0
    write_1h: int = 0
    read: int = 0
    # Report the cache counts as null (and no breakdown), as some gateways do.
    nulls: bool = False

    @property
    def creation(self) -> int:
        return self.write_5m + self.write_1h


def token_estimate(chars: int) -> int:
    """The simulator's tokenizer: one token per four characters, never zero."""
    return max(1, math.ceil(chars / 4))


def error_body(status: int, message: str, request_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": request_id,
    }


def parse_messages_request(body: Any, *, require_max_tokens: bool) -> MessagesRequest:
    """Validate the parts of the body the simulator relies on; raise InvalidRequest otherwise."""
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required")
    max_tokens = body.get("max_tokens")
    if require_max_tokens and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise InvalidRequest("max_tokens: Field required (a positive integer)")
    if body.get("stream"):
        raise InvalidRequest("stream: the simulator only serves non-streaming requests")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: at least one message is required")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"messages.{index}.role: Input should be 'user' or 'assistant'")
    tools = body.get("tools") or []
    output_schema = _output_schema(body.get("output_config"))
    prefix = cache_prefix(model, body.get("system"), tools, output_schema)
    return MessagesRequest(
        model=model,
        max_tokens=max_tokens if require_max_tokens else None,
        user_text="\n\n".join(
            text for m in messages if m["role"] == "user" for text in _block_texts(m.get("content"))
        ),
        input_tokens=estimate_input_tokens(body.get("system"), messages, tools, output_schema),
        output_schema=output_schema,
        forced_tool=_forced_tool(tools, body.get("tool_choice")),
        cache_prefix_tokens=prefix[0],
        cache_key=prefix[1],
        cache_ttl_1h=prefix[1] is not None and _last_ttl(body.get("system")) == "1h",
    )


def _last_ttl(system: Any) -> Any:
    """The `ttl` of the last system block marked cache_control (None when it sets none)."""
    marked = [b for b in system if isinstance(b, dict) and isinstance(b.get("cache_control"), dict)]
    return marked[-1]["cache_control"].get("ttl") if marked else None


def cache_prefix(
    model: str, system: Any, tools: Any, output_schema: Mapping[str, Any] | None
) -> tuple[int, str | None]:
    """(tokens, key) of the prompt prefix up to the last system block marked cache_control:
    tools, output schema and system text in that order (as the API orders its cache prefix).
    (0, None) when no system block is marked."""
    if not isinstance(system, list):
        return 0, None
    marked = [i for i, b in enumerate(system) if isinstance(b, dict) and b.get("cache_control")]
    if not marked:
        return 0, None
    parts = [orjson.dumps(tools).decode() if tools else ""]
    parts.append(orjson.dumps(output_schema).decode() if output_schema is not None else "")
    parts += list(_block_texts(system[: marked[-1] + 1]))
    chars = sum(map(len, parts))
    key = hashlib.sha256("\0".join([model, *parts]).encode()).hexdigest()
    return token_estimate(chars), key


def estimate_input_tokens(
    system: Any, messages: list[dict[str, Any]], tools: Any, output_schema: Mapping[str, Any] | None
) -> int:
    """ceil(chars / 4) over system text, every message's text, and the tool and schema JSON."""
    chars = sum(map(len, _block_texts(system)))
    chars += sum(len(text) for m in messages for text in _block_texts(m.get("content")))
    if tools:
        chars += len(orjson.dumps(tools))
    if output_schema is not None:
        chars += len(orjson.dumps(output_schema))
    return token_estimate(chars)


def build_reply(
    request: MessagesRequest,
    *,
    corrupt: bool,
    stop: str | None = None,
    needs_tokens: int | None = None,
) -> Reply:
    """The assistant content; ``corrupt`` makes structured output fail its schema on purpose.

    ``stop`` forces a stop reason ("max-tokens", "refusal", "empty", "pause-turn",
    "context-window"); ``needs_tokens`` makes the output that long, so a request with less
    ``max_tokens`` is cut off.
    """
    if stop == "refusal":
        return Reply([], "refusal", 0)
    if stop == "empty":
        return Reply([], "end_turn", 0)
    if stop == "pause-turn":
        return Reply([], "pause_turn", 0)
    reply = _complete_reply(request, corrupt=corrupt)
    room = request.max_tokens or 0
    if stop == "max-tokens" or (needs_tokens is not None and room < needs_tokens):
        return Reply(_cut(reply.content), "max_tokens", room)
    if stop == "context-window":
        cut = _cut(reply.content)
        return Reply(cut, "model_context_window_exceeded", reply.output_tokens // 2 or 1)
    if needs_tokens is not None:
        return Reply(reply.content, reply.stop_reason, needs_tokens)
    return reply


def _cut(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Text content cut in half: unbalanced brackets and quotes, never valid JSON."""
    cut = []
    for block in content:
        if block.get("type") == "text":
            block = {**block, "text": block["text"][: len(block["text"]) // 2]}
        cut.append(block)
    return cut


def _complete_reply(request: MessagesRequest, *, corrupt: bool) -> Reply:
    if request.forced_tool is not None:
        tool_input = fit_schema(request.forced_tool["input_schema"], request.user_text)
        if corrupt:
            tool_input = _without_required_field(tool_input, request.forced_tool["input_schema"])
        block = {
            "type": "tool_use",
            "id": f"toolu_sim_{uuid.uuid4().hex[:24]}",
            "name": request.forced_tool["name"],
            "input": tool_input,
        }
        return Reply([block], "tool_use", token_estimate(len(orjson.dumps(tool_input))))
    if request.output_schema is not None:
        text = orjson.dumps(fit_schema(request.output_schema, request.user_text)).decode()
        if corrupt:
            # Cutting the document in half leaves unbalanced brackets/quotes: never valid JSON.
            text = text[: len(text) // 2]
        return Reply([{"type": "text", "text": text}], "end_turn", token_estimate(len(text)))
    text = plain_reply(request.user_text)
    stop_reason = "end_turn"
    if request.max_tokens is not None and token_estimate(len(text)) > request.max_tokens:
        text, stop_reason = text[: request.max_tokens * 4], "max_tokens"
    return Reply([{"type": "text", "text": text}], stop_reason, token_estimate(len(text)))


def message_body(
    request: MessagesRequest, reply: Reply, cache: CacheUsage | None = None
) -> dict[str, Any]:
    cache = cache or CacheUsage()
    usage: dict[str, Any] = {
        "input_tokens": request.input_tokens,
        "output_tokens": reply.output_tokens,
        "cache_creation_input_tokens": None if cache.nulls else cache.creation,
        "cache_read_input_tokens": None if cache.nulls else cache.read,
    }
    if not cache.nulls:
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": cache.write_5m,
            "ephemeral_1h_input_tokens": cache.write_1h,
        }
    return {
        "id": f"msg_sim_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": reply.content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def _without_required_field(tool_input: Any, schema: Mapping[str, Any]) -> dict[str, Any]:
    """Tool input that breaks its schema: the first required field is dropped.

    Tool input must stay a JSON object for the SDK to parse the block, so invalid JSON text
    (used for structured output) is not an option; schemas without required fields get an
    undeclared field instead.
    """
    broken = dict(tool_input) if isinstance(tool_input, dict) else {}
    required = [key for key in schema.get("required", []) if key in broken]
    if required:
        del broken[required[0]]
    else:
        broken["unexpected_field"] = True
    return broken


def _block_texts(content: Any) -> Iterable[str]:
    """Text carried by a string or a list of content blocks (text, tool input, tool results)."""
    if isinstance(content, str):
        yield content
        return
    if not isinstance(content, list):
        return
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            yield block["text"]
        elif block.get("type") == "tool_use":
            yield orjson.dumps(block.get("input", {})).decode()
        elif block.get("type") == "tool_result":
            yield from _block_texts(block.get("content"))


def _output_schema(output_config: Any) -> Mapping[str, Any] | None:
    if not isinstance(output_config, dict) or output_config.get("format") is None:
        return None
    fmt = output_config["format"]
    if (
        not isinstance(fmt, dict)
        or fmt.get("type") != "json_schema"
        or not isinstance(fmt.get("schema"), dict)
    ):
        raise InvalidRequest(
            "output_config.format: expected {'type': 'json_schema', 'schema': {...}}"
        )
    schema: dict[str, Any] = fmt["schema"]
    return schema


def _forced_tool(tools: Any, tool_choice: Any) -> Mapping[str, Any] | None:
    """The tool the model must call: named by tool_choice "tool", or the first one for "any"."""
    if not isinstance(tool_choice, dict) or tool_choice.get("type") not in ("tool", "any"):
        return None
    custom = [t for t in tools if isinstance(t, dict) and isinstance(t.get("input_schema"), dict)]
    if tool_choice["type"] == "any":
        if not custom:
            raise InvalidRequest(
                "tool_choice: 'any' requires at least one tool with an input_schema"
            )
        return custom[0]
    for tool in custom:
        if tool.get("name") == tool_choice.get("name"):
            return tool
    raise InvalidRequest(
        f"tool_choice: tool {tool_choice.get('name')!r} is not among the request's tools"
    )
