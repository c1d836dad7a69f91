"""A job's task as it is sent and read (stream_app.jobs.tasks): pure, no Kafka, no HTTP."""

from __future__ import annotations

import pytest

from schemas import TaskSpec
from stream_app.jobs.tasks import PRESETS, UnknownTask, resolve_task
from stream_app.provider.request import (
    DEFAULT_INSTRUCTIONS,
    PREAMBLE,
    cache_min_tokens,
    prepare_task,
)
from stream_app.provider.task_schema import UnsupportedSchema

SCHEMA = {
    "type": "object",
    "properties": {
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "feature_requests": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["rating", "feature_requests"],
    "additionalProperties": False,
}


def prepared(instructions: str = "Rate the review.", model: str | None = None):  # type: ignore[no-untyped-def]
    spec = TaskSpec(instructions=instructions, output_schema=SCHEMA, model=model, max_tokens=300)
    return prepare_task(spec, name=None, default_model="claude-sonnet-4-6", default_max_tokens=1024)


def test_the_record_is_its_own_block_after_the_task() -> None:
    request = prepared().request("Great app. Please add dark mode.")
    assert request["system"][0]["text"] == PREAMBLE and "data" in PREAMBLE
    assert request["system"][1]["text"] == "Rate the review."
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Great app. Please add dark mode."}]}
    ]
    assert request["output_config"]["format"]["type"] == "json_schema"
    assert (request["model"], request["max_tokens"]) == ("claude-sonnet-4-6", 300)


def test_a_short_prefix_is_not_marked_for_caching_a_long_one_is() -> None:
    assert "cache_control" not in prepared().system()[1]
    long = prepared("Rate the review carefully. " * 200)
    assert long.cache_prefix
    assert long.system()[1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in long.system()[0]
    # Opus 4.6 needs 4096 tokens: the same prefix is not enough there.
    assert not prepared("Rate the review carefully. " * 200, model="claude-opus-4-6").cache_prefix
    assert cache_min_tokens("claude-haiku-4-5-20251001") == 4096


def test_answers_are_validated_against_the_submitted_schema() -> None:
    task = prepared()
    assert task.parse('{"rating": 4, "feature_requests": ["dark mode"]}') == {
        "rating": 4,
        "feature_requests": ["dark mode"],
    }
    # The API does not enforce maximum (it went into the description); we do.
    assert "rating" in str(task.parse('{"rating": 9, "feature_requests": []}'))
    assert "feature_requests" in str(task.parse('{"rating": 3}'))
    assert isinstance(task.parse("[1, 2]"), str)
    assert isinstance(task.parse("{not json"), str)


def test_the_default_task_is_todays() -> None:
    task = prepare_task(None, name=None, default_model="m", default_max_tokens=512)
    assert task.is_default and task.instructions == DEFAULT_INSTRUCTIONS
    assert (task.model, task.max_tokens, task.name) == ("m", 512, "smart-summary")
    fields = task.parse('{"summary": "s", "insights": [], "sentiment": "neutral", "topics": []}')
    assert isinstance(fields, dict) and fields["sentiment"] == "neutral"


def test_fingerprints_follow_what_is_asked() -> None:
    assert prepared().fingerprint == prepared().fingerprint
    assert prepared().fingerprint != prepared("Other.").fingerprint
    assert prepared().fingerprint != prepared(model="claude-haiku-4-5").fingerprint


def test_presets_and_their_errors() -> None:
    spec, name = resolve_task("support-ticket-triage")
    assert spec is PRESETS["support-ticket-triage"] and name == "support-ticket-triage"
    assert resolve_task("smart-summary") == (None, None)
    assert resolve_task(None) == (None, None)
    with pytest.raises(UnknownTask, match="no preset 'nope'"):
        resolve_task("nope")
    bad = TaskSpec(instructions="x", output_schema={"type": "object", "properties": {"a": {}}})
    with pytest.raises(UnsupportedSchema):
        resolve_task(bad)


def test_a_task_model_must_be_priced_or_the_configured_one() -> None:
    from stream_app.jobs.tasks import UnknownModel, check_task_model

    check_task_model(None, "claude-sonnet-4-6")
    check_task_model("claude-haiku-4-5", "claude-sonnet-4-6")
    check_task_model("my-own-deployment", "my-own-deployment")  # CLAUDE_MODEL itself
    check_task_model("claude-haiku-5-5", "claude-sonnet-5-5")  # a current model
    check_task_model("claude-opus-5-5-20261001", "claude-sonnet-5-5")  # dated
    for unknown in ("claude-nope-1", "gpt-4", "claude-sonnet-9-9"):
        with pytest.raises(UnknownModel) as refused:
            check_task_model(unknown, "claude-sonnet-4-6")
        assert repr(unknown) in str(refused.value)
