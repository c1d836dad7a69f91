"""One root exception; subclasses name what happened."""


def first_line(exc: BaseException) -> str:
    """An exception's first line, at most 200 characters (its type's name when empty): what
    goes into a record's `error` and into log fields."""
    lines = str(exc).splitlines()
    return lines[0][:200] if lines else type(exc).__name__


class InsightStreamError(Exception):
    """Root of every error this service raises on purpose."""


class BrokerUnavailable(InsightStreamError):
    """The Kafka broker could not be reached or started."""


class StartupFailed(InsightStreamError):
    """Something the service needs before it can start is missing or taken."""


class DirectoryInUse(StartupFailed):
    """Another process holds a data directory (see stream_app/running/dir_lock.py)."""


class PortInUse(StartupFailed):
    """Something already listens on a port this process was told to open."""


class UnreadableAnswer(InsightStreamError):
    """The provider answered a call with something that is not a Messages API message (a
    proxy's page, a truncated body): its message says what came instead."""


class RecordFailed(InsightStreamError):
    """A record ran out of attempts or hit a non-retryable provider error."""


class JobNeverAnnounced(InsightStreamError):
    """A record whose job's `created` event was to follow it never got one: the submit
    that published it failed before the end, so the job does not exist."""
