"""What a worker reads of its local table store: a job's results by key prefix, on Faust's
real RocksDB store (no broker: the partition databases are written directly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust
import orjson

from stream_app.jobs.aggregation import result_key, result_prefix
from stream_app.kafka.replicas import stored_results, values_with_prefix


def results_table(tmp_path: Path, store: str = "rocksdb://") -> Any:
    app = faust.App(
        "replicas-test",
        broker="kafka://127.0.0.1:1",
        store=store,
        datadir=str(tmp_path),
        autodiscover=False,
    )
    schema = faust.Schema(
        key_type=str, value_type=None, key_serializer="raw", value_serializer="json"
    )
    return app.Table("record-results", partitions=4, schema=schema)


def test_the_results_of_one_job_are_read_by_prefix_from_every_partition(tmp_path: Path) -> None:
    table = results_table(tmp_path)
    store: Any = table.data
    written = {
        # This job's results on its own partition and on a standby's.
        (1, result_key("job-a", 0)): {"index": 0},
        (1, result_key("job-a", 12)): {"index": 12},
        (3, result_key("job-a", 7)): {"index": 7},
        # Another job whose id starts with this one's, and one sorted right after it.
        (1, result_key("job-a#2", 5)): {"index": 5, "other": True},
        (1, result_key("job-b", 0)): {"index": 0, "other": True},
        (2, result_key("job-", 3)): {"index": 3, "other": True},
    }
    for (partition, key), value in written.items():
        # As Faust stores them: the key serialized as the table does (a JSON string).
        store._db_for_partition(partition).put(store._encode_key(key), orjson.dumps(value))
    store._db_for_partition(0).put(store.offset_key, b"41")  # Faust's own bookkeeping

    chunks = values_with_prefix(table, result_prefix("job-a"))
    assert chunks is not None
    # The prefix alone also matches the other job "job-a#2"...
    assert sorted(rest for found in chunks for rest, _ in found) == [b"0", b"12", b"2#5", b"7"]
    # ...whose keys do not end in an index after it.
    raw = stored_results(table, "job-a")
    assert raw is not None
    results = [orjson.loads(value) for chunk in raw for value in chunk]
    assert sorted(value["index"] for value in results) == [0, 7, 12]
    assert not any(value.get("other") for value in results)
    assert list(stored_results(table, "job-c") or ["not a store that seeks"]) == []


def test_a_store_that_cannot_seek_says_so(tmp_path: Path) -> None:
    table = results_table(tmp_path, "memory://")
    assert values_with_prefix(table, "job-a#") is None
    assert stored_results(table, "job-a") is None


def test_a_long_run_of_keys_is_read_in_chunks_each_from_a_fresh_seek(tmp_path: Path) -> None:
    table = results_table(tmp_path)
    store: Any = table.data
    db = store._db_for_partition(0)
    for index in range(25):
        db.put(store._encode_key(result_key("job-a", index)), orjson.dumps({"index": index}))
    db.put(store._encode_key(result_key("job-b", 0)), b"{}")

    chunks = values_with_prefix(table, result_prefix("job-a"), chunk=10)
    assert chunks is not None
    first = next(chunks)
    # Written meanwhile (a result counted between two chunks): found, as it sorts later.
    db.put(store._encode_key(result_key("job-a", 99)), orjson.dumps({"index": 99}))
    sizes = [len(first)] + [len(found) for found in chunks]
    assert sizes == [10, 10, 6]
    raw = stored_results(table, "job-a")
    assert raw is not None
    indexes = [orjson.loads(value)["index"] for chunk in raw for value in chunk]
    assert sorted(indexes) == [*range(25), 99]  # each once
