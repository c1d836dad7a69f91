"""One root exception; subclasses name what happened."""


class InsightStreamError(Exception):
    """Root of every error this service raises on purpose."""


class BrokerUnavailable(InsightStreamError):
    """The Kafka broker could not be reached or started."""


class RecordFailed(InsightStreamError):
    """A record ran out of attempts or hit a non-retryable provider error."""
