"""The one set of models for HTTP bodies, topic payloads and the LLM's structured output."""

from schemas.cancel import JobCancelled, JobDeleted, JobEvent, JobRetried, parse_job_event
from schemas.events import DeadLetter, JobCreated, RecordEvent, ResultEvent
from schemas.http import BatchAccepted, BatchRecord, BatchRequest, RetryAccepted, RetryRequest
from schemas.insight import Insight, InsightResponse, ResponseMetadata
from schemas.task import TaskResponse, TaskSpec

__all__ = [
    "BatchAccepted",
    "BatchRecord",
    "BatchRequest",
    "DeadLetter",
    "Insight",
    "InsightResponse",
    "JobCancelled",
    "JobCreated",
    "JobDeleted",
    "JobEvent",
    "JobRetried",
    "RecordEvent",
    "ResponseMetadata",
    "ResultEvent",
    "RetryAccepted",
    "RetryRequest",
    "TaskResponse",
    "TaskSpec",
    "parse_job_event",
]
