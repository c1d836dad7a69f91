"""When a batch-lane job's gathered records become a provider batch. Pure logic, no Kafka
(stream_app.kafka.batch_lane gathers the records and asks).

The provider takes about as long for a batch of 1,000 requests as for one of 10 (most end
within the hour whatever their size), so a job is best sent as a few large batches: many
small ones add polls, result downloads and create calls, and use up the provider's batch
rate limits, without a result coming sooner. The gathered records of a job become a
provider batch as soon as one of these holds:

1. **full**: BATCH_LANE_MAX_REQUESTS records wait (or the provider's 100,000 / 256 MB);
2. **the job's last record arrived**: every record of the job has reached the lane (and
   every item the lane sent to a later batch came back): nothing more is coming, so a
   small job's records go at once, in one batch;
3. **quiet**: no record joined for BATCH_LANE_WINDOW_SECONDS while none is known to be on
   its way (the job's size is not known yet, or these are a later round of retries): a
   pause in a job whose records are still coming does not cut it short;
4. **old**: the oldest has waited BATCH_LANE_MAX_WAIT_SECONDS (records that trickle in,
   or a job some of whose records never reach the lane, are not held back longer).

A 20,000-record job is therefore sent as 20 batches of 1,000 (the last one when its last
record arrives), a 300-record job as one, as soon as its last record is in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Gathered:
    """What a job has gathered for its next provider batch. `first_at`, `last_at`: when the
    oldest and the newest of the `waiting` records joined (seconds, any one clock);
    `last_arrived`: the job's last record has arrived (rule 2); `more_expected`: records of
    the job are known to be still on their way (rule 3 waits for them)."""

    waiting: int
    first_at: float
    last_at: float
    last_arrived: bool = False
    more_expected: bool = False


@dataclass(frozen=True)
class GroupingRule:
    """`max_requests`: BATCH_LANE_MAX_REQUESTS (capped by the provider's 100,000);
    `quiet_seconds`: BATCH_LANE_WINDOW_SECONDS; `max_wait_seconds`:
    BATCH_LANE_MAX_WAIT_SECONDS."""

    max_requests: int
    quiet_seconds: float
    max_wait_seconds: float

    def due_in(self, gathered: Gathered, now: float) -> float:
        """Seconds until the gathered records should be cut into a provider batch: 0 now,
        `math.inf` when nothing waits."""
        if gathered.waiting <= 0:
            return math.inf
        if gathered.waiting >= self.max_requests or gathered.last_arrived:
            return 0.0
        due = gathered.first_at + self.max_wait_seconds
        if not gathered.more_expected:
            due = min(due, gathered.last_at + self.quiet_seconds)
        return max(0.0, due - now)

    def why(self, gathered: Gathered, now: float) -> str:
        """Which rule closes the batch now (for the log): `full`, `last record`, `quiet`
        or `old`; '' when none does yet."""
        if gathered.waiting >= self.max_requests:
            return "full"
        if gathered.waiting and gathered.last_arrived:
            return "last record"
        if gathered.waiting and now >= gathered.first_at + self.max_wait_seconds:
            return "old"
        if (
            gathered.waiting
            and not gathered.more_expected
            and now >= gathered.last_at + self.quiet_seconds
        ):
            return "quiet"
        return ""
