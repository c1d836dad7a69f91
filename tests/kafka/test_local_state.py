"""Local table stores against the Kafka cluster they were built from (no broker needed)."""

from __future__ import annotations

from pathlib import Path

from stream_app.kafka.local_state import CLUSTER_ID_FILE, adopt_cluster, partition_stores

TABLES = ["job-status", "record-results"]


def _stores(tabledir: Path) -> list[str]:
    return sorted(p.name for t in TABLES for p in partition_stores(tabledir, t).values())


def _make_stores(tabledir: Path) -> None:
    for table in TABLES:
        for partition in range(2):
            (tabledir / f"{table}-{partition}.db").mkdir(parents=True)
    (tabledir / "unrelated-0.db").mkdir()


def test_stores_of_another_cluster_are_dropped_and_the_new_id_kept(tmp_path: Path) -> None:
    _make_stores(tmp_path)
    (tmp_path / CLUSTER_ID_FILE).write_text("old-cluster\n")
    dropped = adopt_cluster(tmp_path, TABLES, "new-cluster")
    assert len(dropped) == 4 and _stores(tmp_path) == []
    assert (tmp_path / "unrelated-0.db").exists()  # only the named tables' stores
    assert (tmp_path / CLUSTER_ID_FILE).read_text().strip() == "new-cluster"


def test_stores_of_the_same_cluster_are_kept(tmp_path: Path) -> None:
    _make_stores(tmp_path)
    (tmp_path / CLUSTER_ID_FILE).write_text("same\n")
    assert adopt_cluster(tmp_path, TABLES, "same") == []
    assert len(_stores(tmp_path)) == 4


def test_stores_without_a_recorded_cluster_are_adopted(tmp_path: Path) -> None:
    _make_stores(tmp_path)
    assert adopt_cluster(tmp_path, TABLES, "first-seen") == []
    assert len(_stores(tmp_path)) == 4
    assert (tmp_path / CLUSTER_ID_FILE).read_text().strip() == "first-seen"
    # A broker that reports no cluster id changes nothing.
    assert adopt_cluster(tmp_path, TABLES, None) == []
    assert (tmp_path / CLUSTER_ID_FILE).read_text().strip() == "first-seen"
