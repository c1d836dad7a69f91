"""Local table state (RocksDB, one folder per table partition) against its changelog.

The changelog in Kafka is the truth; a partition's local store is a cache of it that
records the offset it has applied. When the two cannot be reconciled, Faust's recovery
refuses to start (ConsistencyError: the persisted offset is above the changelog's high
watermark) and the worker would wait forever. Dropping that partition's folder is always
safe: recovery then rebuilds it from the changelog.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rocksdict import AccessType, Options, Rdict

from stream_app.core.logs import get_logger

log = get_logger(__name__)

# Where Faust's RocksDB store keeps the last changelog offset applied to a partition
# (faust/stores/rocksdb.py, Store.offset_key).
FAUST_OFFSET_KEY = b"__faust\0offset__"
# Beside the stores: the id of the Kafka cluster whose changelogs they were built from.
CLUSTER_ID_FILE = "kafka-cluster-id"
_PARTITION_DIR = re.compile(r"^(?P<table>.+)-(?P<partition>\d+)\.db$")


def partition_stores(tabledir: Path, table: str) -> dict[int, Path]:
    """partition -> folder of `table`'s local RocksDB stores under `tabledir`."""
    found: dict[int, Path] = {}
    for path in tabledir.glob(f"{table}-*.db"):
        match = _PARTITION_DIR.match(path.name)
        if match and match["table"] == table:
            found[int(match["partition"])] = path
    return found


def persisted_offset(store: Path) -> int | None:
    """The changelog offset a Faust RocksDB partition store says it has applied."""
    db = Rdict(str(store), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        raw = db.get(FAUST_OFFSET_KEY)
    finally:
        db.close()
    return int(raw) if raw is not None else None


def discard_tables(tabledir: Path, tables: Iterable[str]) -> list[str]:
    """Drop every local partition store of `tables`; returns the folder names dropped."""
    dropped = []
    for table in tables:
        for path in partition_stores(tabledir, table).values():
            shutil.rmtree(path)
            dropped.append(path.name)
    return sorted(dropped)


async def drop_unreconcilable(
    tabledir: Path, changelogs: dict[str, str], bootstrap_servers: str
) -> list[str]:
    """Drop local partition stores whose persisted offset the changelog cannot have.

    `changelogs` maps table name -> changelog topic. A store that applied offset N needs
    a changelog whose end offset is above N; when it is not (the broker lost data, a topic
    was recreated, the file was damaged), Faust would refuse to recover. Returns the
    folder names dropped, each logged. Run before the Faust app opens its stores.
    """
    stores = {
        (table, partition): path
        for table in changelogs
        for partition, path in partition_stores(tabledir, table).items()
    }
    if not stores:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = {key: TopicPartition(changelogs[key[0]], key[1]) for key in stores}
        ends = await consumer.end_offsets(list(tps.values()))
    finally:
        await consumer.stop()
    dropped = []
    for key, path in sorted(stores.items()):
        end = ends.get(tps[key])
        try:
            offset = persisted_offset(path)
        except Exception as exc:  # an unreadable store is as good as lost: rebuild it
            log.warning("local table store unreadable", store=path.name, error=str(exc))
            offset, end = 0, 0
        if offset is None or end is None or offset < end:
            continue
        log.warning(
            "local table store is ahead of its changelog; dropped it, recovery rebuilds it "
            "from the changelog",
            store=path.name,
            persisted_offset=offset,
            changelog_end_offset=end,
        )
        shutil.rmtree(path)
        dropped.append(path.name)
    return dropped


async def kafka_cluster_id(bootstrap_servers: str) -> str | None:
    """The cluster id the brokers report in their metadata (None when they report none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    found = cluster.get("cluster_id")
    return str(found) if found else None


def adopt_cluster(tabledir: Path, tables: Iterable[str], cluster_id: str | None) -> list[str]:
    """Drop every local store of `tables` when it was built from another Kafka cluster.

    A store's persisted offset means something only for the changelog it came from: after
    a switch to another cluster (the embedded Tansu, then the embedded Apache Kafka; a new
    KAFKA_BOOTSTRAP_SERVERS) an offset below the new changelog's end would be taken as a
    valid starting point, and the jobs of the other cluster would shadow or corrupt this
    one's. The cluster id is kept in `tabledir`/kafka-cluster-id; stores found without it
    (made before it existed) are kept and adopted. Returns the folder names dropped.
    """
    tables = list(tables)
    marker = tabledir / CLUSTER_ID_FILE
    known = marker.read_text().strip() if marker.exists() else None
    dropped: list[str] = []
    if cluster_id is not None and known is not None and known != cluster_id:
        dropped = discard_tables(tabledir, tables)
        log.warning(
            "local table state was built from another Kafka cluster; discarded it, recovery "
            "rebuilds it from this cluster's changelogs",
            previous_cluster=known,
            cluster=cluster_id,
            dropped=len(dropped),
        )
    if cluster_id is not None and cluster_id != known:
        tabledir.mkdir(parents=True, exist_ok=True)
        marker.write_text(cluster_id + "\n")
    return dropped
