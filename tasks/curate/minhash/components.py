"""(d) Distributed connected components over hash-partitioned edge files."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curate.minhash.candidates import PAIRS_ROW_GROUP
from tasks.curate.minhash.layout import Layout, PART_BITS, PART_MASK, ROW_BITS, write_table
from tasks.curate.minhash.memory import measured
from tasks.executor import run_tasks
from tasks.storage import Location, atomic_output


# (d) connected components: alternating large-star / small-star over hash-partitioned edge files --
#
# Kiveris et al., "Connected Components in MapReduce and Beyond" (SoCC 2014). Edges live in files
# partitioned by a hash of the node that owns them; a task reads one partition's edges from every
# file of the phase before, applies one operation node by node, and writes one file whose row
# groups are its output per destination partition. Large-star links every larger neighbour of a
# node to the smallest node of its neighbourhood; small-star links a node and its smaller
# neighbours to the smallest of them. Alternated, they turn every component into a star around its
# smallest node, in O(log n) rounds in practice (O(log^2 n) proven), a long chain included; the
# loop stops at the first round whose large-star input is already such a star forest (an operation
# would then change nothing). Every operation is per node and every node's edges meet in one
# partition, so the edge sets, round count and results do not depend on the partition count.

CLUSTER_SCHEMA = pa.schema(
    [pa.field("position", pa.int64(), nullable=False), pa.field("representative", pa.int64(), nullable=False)]
)
EDGE_SCHEMA = pa.schema(
    [
        pa.field("destination", pa.int64(), nullable=False),
        pa.field("node", pa.int64(), nullable=False),
        pa.field("neighbour", pa.int64(), nullable=False),
    ]
)


def hash_partition(nodes: np.ndarray, partitions: int) -> np.ndarray:
    """The partition of each node: splitmix64's finaliser, so positions of one part spread evenly."""
    mixed = nodes.astype(np.uint64)
    mixed ^= mixed >> np.uint64(30)
    mixed *= np.uint64(0xBF58476D1CE4E5B9)
    mixed ^= mixed >> np.uint64(27)
    mixed *= np.uint64(0x94D049BB133111EB)
    mixed ^= mixed >> np.uint64(31)
    return (mixed % np.uint64(partitions)).astype(np.int64)


def _unique_edges(node: np.ndarray, neighbour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (node, neighbour) without self-loops, sorted by node then neighbour."""
    order = np.lexsort((neighbour, node))
    node, neighbour = node[order], neighbour[order]
    keep = node != neighbour
    keep[1:] &= (node[1:] != node[:-1]) | (neighbour[1:] != neighbour[:-1])
    return node[keep], neighbour[keep]


@dataclass(frozen=True)
class _Neighbourhoods:
    """Sorted distinct edges grouped by node: each node's smallest and largest neighbour."""

    node: np.ndarray  # per edge
    neighbour: np.ndarray  # per edge
    group: np.ndarray  # per edge: index of its node in ``nodes``
    nodes: np.ndarray
    smallest: np.ndarray
    largest: np.ndarray

    @classmethod
    def of(cls, node: np.ndarray, neighbour: np.ndarray) -> _Neighbourhoods:
        node, neighbour = _unique_edges(node, neighbour)
        starts = np.ones(len(node), dtype=bool)
        starts[1:] = node[1:] != node[:-1]
        first = np.flatnonzero(starts)
        last = np.empty_like(first)
        last[:-1], last[-1:] = first[1:] - 1, len(node) - 1
        return cls(node, neighbour, np.cumsum(starts) - 1, node[first], neighbour[first], neighbour[last])

    def star_forest(self) -> bool:
        """Whether every node is a centre (all neighbours larger) or a leaf (one, smaller neighbour)."""
        centre = self.smallest > self.nodes
        leaf = (self.smallest == self.largest) & (self.smallest < self.nodes)
        return bool(np.all(centre | leaf))

    def large_star(self) -> tuple[np.ndarray, np.ndarray]:
        """Every larger neighbour of a node, linked to the smallest of the node's closed
        neighbourhood. Input: both directions of every edge. Output: (larger, smaller) endpoints."""
        smallest = np.minimum(self.nodes, self.smallest)[self.group]
        larger = self.neighbour > self.node
        return self.neighbour[larger], smallest[larger]

    def small_star(self) -> tuple[np.ndarray, np.ndarray]:
        """A node and its smaller neighbours, each linked to the smallest of them. Input: every
        edge once, as (larger, smaller). Output: (larger, smaller) endpoints."""
        smallest = self.smallest[self.group]
        moved = self.neighbour != smallest
        return np.concatenate([self.neighbour[moved], self.nodes]), np.concatenate([smallest[moved], self.smallest])


def large_star(node: np.ndarray, neighbour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _Neighbourhoods.of(node, neighbour).large_star()


def small_star(node: np.ndarray, neighbour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _Neighbourhoods.of(node, neighbour).small_star()


def _read_inbox(senders: Sequence[Location], destination: int) -> tuple[np.ndarray, np.ndarray]:
    """The edges every sender of the phase before wrote for this destination."""
    filters = [("destination", "=", destination)]
    tables = [pq.read_table(s.path, columns=["node", "neighbour"], filters=filters, filesystem=s.fs) for s in senders]
    table = pa.concat_tables(tables) if tables else EDGE_SCHEMA.empty_table().select(["node", "neighbour"])
    return table.column("node").to_numpy(), table.column("neighbour").to_numpy()


def _write_edges(target: Location, destination: np.ndarray, node: np.ndarray, neighbour: np.ndarray) -> None:
    """Edges sorted by (node, neighbour), written grouped by destination, one row group (or more)
    per destination: a reader skips the others. Slices of the sorted columns, no further copies."""
    order = np.argsort(destination, kind="stable")
    columns = {"destination": destination[order], "node": node[order], "neighbour": neighbour[order]}
    del order
    bounds = np.flatnonzero(np.diff(columns["destination"])) + 1
    with atomic_output(target) as stream, pq.ParquetWriter(stream, EDGE_SCHEMA, compression="zstd") as writer:
        for start, stop in zip(np.append(0, bounds), np.append(bounds, len(node))) if len(node) else []:
            table = pa.table({k: v[start:stop] for k, v in columns.items()}, schema=EDGE_SCHEMA)
            writer.write_table(table, row_group_size=PAIRS_ROW_GROUP)
        if not len(node):
            writer.write_table(EDGE_SCHEMA.empty_table())


def _write_both_directions(target: Location, larger: np.ndarray, smaller: np.ndarray, partitions: int) -> None:
    node, neighbour = np.concatenate([larger, smaller]), np.concatenate([smaller, larger])
    node, neighbour = _unique_edges(node, neighbour)
    _write_edges(target, hash_partition(node, partitions), node, neighbour)


def scatter_pairs(verified_file: Location, target: Location, partitions: int) -> dict[str, int]:
    """One part's verified pairs, both directions, to the partitions of their nodes."""
    table = pq.read_table(verified_file.path, columns=["a", "b"], filesystem=verified_file.fs)
    _write_both_directions(target, table.column("b").to_numpy(), table.column("a").to_numpy(), partitions)
    return {"pairs": table.num_rows}


def large_star_partition(senders: list[Location], partition: int, target: Location, partitions: int) -> dict[str, int]:
    hoods = _Neighbourhoods.of(*_read_inbox(senders, partition))
    # Small-star needs each edge once, at its larger endpoint.
    larger, smaller = _unique_edges(*hoods.large_star())
    _write_edges(target, hash_partition(larger, partitions), larger, smaller)
    return {"edges": len(hoods.node), "not_star": int(not hoods.star_forest())}


def small_star_partition(senders: list[Location], partition: int, target: Location, partitions: int) -> dict[str, int]:
    larger, smaller = small_star(*_read_inbox(senders, partition))
    _write_both_directions(target, larger, smaller, partitions)
    return {"edges": len(larger)}


def label_partition(senders: list[Location], partition: int, target: Location) -> dict[str, Any]:
    """In a star forest around the smallest nodes: each leaf and its centre, sent to the leaf's part."""
    hoods = _Neighbourhoods.of(*_read_inbox(senders, partition))
    leaf = hoods.smallest < hoods.nodes
    leaves, centres = hoods.nodes[leaf], hoods.smallest[leaf]
    part_keys = leaves >> ROW_BITS
    _write_edges(target, part_keys, leaves, centres)
    return {"duplicates": len(leaves), "clusters": int((~leaf).sum()), "parts": np.unique(part_keys).tolist()}


def write_part_clusters(senders: list[Location], part_key: int, target: Location) -> dict[str, int]:
    positions, representatives = _read_inbox(senders, part_key)
    order = np.argsort(positions)
    rows = {"position": positions[order], "representative": representatives[order]}
    write_table(target, pa.table(rows, schema=CLUSTER_SCHEMA))
    return {"rows": len(positions)}


def _task_file(folder: Location, task: int) -> Location:
    return folder.join(f"t{task:05d}.parquet")


@dataclass
class _ComponentsRun:
    """The driver of one clustering: runs each phase as Ray tasks and keeps their memory reports."""

    layout: Layout
    partitions: int
    memory: list[dict[str, Any]]

    @property
    def work(self) -> Location:
        return self.layout.folder("clusters").join("_components")

    def phase(self, name: str, function: Callable, calls: list[tuple]) -> list:
        results = run_tasks(measured, [(function, *call) for call in calls])
        self.memory.extend({"phase": name, "task": i, **report} for i, (_, report) in enumerate(results))
        return [result for result, _ in results]

    def round_folder(self, round_index: int, operation: str) -> Location:
        return self.work.join(f"round-{round_index:03d}", operation)

    def run(self, verified: list[Location]) -> dict[str, int]:
        if not verified:
            return {"pairs": 0, "duplicates": 0, "clusters": 0, "rounds": 0}
        edges = [_task_file(self.round_folder(0, "large-star"), i) for i in range(len(verified))]
        scattered = self.phase("scatter", scatter_pairs, [(f, e, self.partitions) for f, e in zip(verified, edges)])
        stars, rounds = self.star_forest(edges)
        label_files = [_task_file(self.work.join("labels"), p) for p in range(self.partitions)]
        labels = self.phase("labels", label_partition, [(stars, p, label_files[p]) for p in range(self.partitions)])
        part_keys = sorted({key for result in labels for key in result["parts"]})
        self.phase("write", write_part_clusters, [(label_files, key, self._cluster_file(key)) for key in part_keys])
        self.work.delete()
        return {
            "pairs": sum(r["pairs"] for r in scattered),
            "duplicates": sum(r["duplicates"] for r in labels),
            "clusters": sum(r["clusters"] for r in labels),
            "rounds": rounds,
        }

    def star_forest(self, edges: list[Location]) -> tuple[list[Location], int]:
        """Rounds of large-star then small-star until large-star's input is a star forest: its
        files, and the number of rounds. A round's files go once the next round has read them."""
        for round_index in itertools.count():
            stars = edges
            edges = [_task_file(self.round_folder(round_index, "small-star"), p) for p in range(self.partitions)]
            calls = [(stars, p, edges[p], self.partitions) for p in range(self.partitions)]
            if not sum(r["not_star"] for r in self.phase("large-star", large_star_partition, calls)):
                return stars, round_index + 1
            if round_index:
                self.work.join(f"round-{round_index - 1:03d}").delete()
            small = edges
            edges = [_task_file(self.round_folder(round_index + 1, "large-star"), p) for p in range(self.partitions)]
            calls = [(small, p, edges[p], self.partitions) for p in range(self.partitions)]
            self.phase("small-star", small_star_partition, calls)

    def _cluster_file(self, part_key: int) -> Location:
        source, part = part_key >> PART_BITS, part_key & PART_MASK
        return self.layout.part_file("clusters", None, self.layout.sources[source], part)


def cluster(layout: Layout, verified: list[Location], partitions: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Write each part's dropped position -> representative; return stats and every task's memory."""
    run = _ComponentsRun(layout, partitions, [])
    return run.run(verified), run.memory


