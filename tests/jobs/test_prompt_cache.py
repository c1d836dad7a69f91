"""A job's task through the real SDK to the simulator: the prefix is cached when long
enough, the record travels in its own block, and the answer fits the task's schema."""

from __future__ import annotations

import jsonschema

from schemas import BatchRecord, RecordEvent, TaskSpec
from simulator.testing import SimulatorHandle
from stream_app.jobs.processing import RecordProcessor, RetryPolicy
from stream_app.provider.budget import RateBudget
from stream_app.provider.client import InsightClient, build_anthropic_client

SCHEMA = {
    "type": "object",
    "properties": {
        "urgency": {"type": "string", "enum": ["low", "medium", "high"]},
        "refund_requested": {"type": "boolean"},
        "product_area": {"type": "string"},
    },
    "required": ["urgency", "refund_requested", "product_area"],
    "additionalProperties": False,
}


async def test_a_long_prefix_is_written_once_then_read(simulator: SimulatorHandle) -> None:
    client = build_anthropic_client(api_key="sk-x", base_url=simulator.base_url, timeout=10)
    insight = InsightClient(client, model="claude-sonnet-4-6", max_tokens=512)
    processor = RecordProcessor(client=insight, budget=RateBudget(6000), policy=RetryPolicy())
    long = insight.prepare(TaskSpec(instructions="Triage it. " * 500, output_schema=SCHEMA))
    short = insight.prepare(TaskSpec(instructions="Triage it.", output_schema=SCHEMA))
    assert long.cache_prefix and not short.cache_prefix
    try:
        results = []
        for index, task in enumerate([long, long, short]):
            text = f"Ticket {index}: billing charged us twice, please refund."
            event = RecordEvent(job_id="j", index=index, record=BatchRecord(text=text))
            results.append(await processor.process(event, task))
    finally:
        await client.close()
    first, second, third = results
    prefix = first.cache_creation_input_tokens
    assert prefix > 1024 and first.cache_read_input_tokens == 0
    assert (second.cache_creation_input_tokens, second.cache_read_input_tokens) == (0, prefix)
    assert third.cache_creation_input_tokens == third.cache_read_input_tokens == 0
    # The cached part is not billed again as plain input.
    assert second.input_tokens == first.input_tokens < prefix
    for result in results:
        assert result.success and result.response is not None
        fields = result.response.model_dump(exclude={"metadata"})
        jsonschema.validate(fields, SCHEMA)
        assert result.response.metadata.cache_read_input_tokens == result.cache_read_input_tokens
    requests = simulator.stats()["requests"]
    # The simulator saw the record's text as the user turn, nothing else.
    assert requests[0]["text"].startswith("Ticket 0: billing charged us twice")
