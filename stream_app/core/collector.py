"""Python's cyclic garbage collector, tuned for a worker with a large, long-lived heap.

CPython starts a young-generation collection whenever tracked container objects allocated
less those freed exceed 700 (`gc.get_threshold()`, (700, 10, 10)). A worker's traffic comes
in bursts that each create thousands of short-lived objects at once (a Kafka fetch response
decoded into records, the SDK's request and answer, a table write's changelog message), so
the default threshold starts a collection for nearly every burst, and each young
collection also walks whatever survived the burst so far. Measured in a worker under
`bench.overhead` (6,000 records, instant provider): 264 young collections in 15 s took 7 %
of the worker's CPU; with the thresholds below, 1 collection, and the worker's CPU per
record fell from 4.1 to 3.5 ms. The bare SDK loop (bench.bare_loop) is not changed by the
same tuning: its heap is small.

`gc.freeze()` once the worker has started moves every object alive then (modules, Faust's
app, settings, the SDK client) to a permanent generation that no collection walks again
(the practice the CPython docs give for long-running servers:
https://docs.python.org/3/library/gc.html#gc.freeze). Cyclic garbage is still collected:
the thresholds only make collections rarer, so memory held by cycles is freed a little
later.
"""

from __future__ import annotations

import gc

# (young, middle, old): a young collection after 10,000 net allocations of tracked objects
# (larger than one burst), a middle one every 20 young, an old one every 20 middle (and,
# by CPython's own rule, only once the long-lived objects grew by a quarter).
THRESHOLDS = (10_000, 20, 20)


def tune_garbage_collector() -> None:
    """Set THRESHOLDS for this process (call once, at start-up)."""
    gc.set_threshold(*THRESHOLDS)


def freeze_startup_objects() -> int:
    """Collect once, then move every object alive now to the permanent generation (call
    once the worker has started). Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
