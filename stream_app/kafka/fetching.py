"""How long, and for how much data, the broker holds a fetch of the worker's continuous
readers: Faust's consumer (records, job events, outcomes) and the group-less folds of
`batch.jobs`/`batch.results` and `batch.spend`.

Kafka answers a fetch request once `fetch.min.bytes` of new data are there or
`fetch.max.wait.ms` has passed, whichever comes first (Kafka protocol: FetchRequest
MinBytes and MaxWaitMs).

- The wait: Faust hard-codes 1.5 s, which results waited out at the end of a job
  (stream_app.kafka.faust_fixes.bound_the_fetch_wait); 0.1 s bounds that delay.
- The size: aiokafka's default of 1 byte answers a fetch as soon as one message is there.
  Every record, outcome and changelog entry is a message, so at 3,000 requests/minute
  (50 records a second) the worker's consumers sent fetch requests back to back, each
  carrying a message or two. Encoding those requests and decoding their answers took 43 %
  of the worker's CPU (py-spy during `bench.tiers --tiers 3000x1`), 0.47 cores in all.
  Holding each fetch for 16 KiB or 0.1 s: 0.32 cores at the same 97 % of the budget. A
  result still reaches the job's status well within a second (`bench.overhead`: p99
  517 ms), since no fetch waits longer than 0.1 s for it.
"""

from __future__ import annotations

FETCH_MAX_WAIT_SECONDS = 0.1
FETCH_MIN_BYTES = 16 * 1024
