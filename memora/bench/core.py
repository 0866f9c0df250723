"""`python -m memora.bench core`: the embedded store against raw hnswlib and networkx, in one run.

Each row measures exactly the public call it names, on a real durable store in a temporary
directory (log append, fsync and apply on every write), next to the baseline doing the same work
on the same data in the same process:

1. `query_similar(q, top_k=10, ef=ef)` against hnswlib `knn_query(q, k=10)` after `set_ef(ef)`,
   with recall@10 of both against exact brute force.
2. `batch([InsertNode(...)])` in batches against hnswlib `add_items` of the same batches.
3. `query_related(node, depth=2)` against `nx.single_source_shortest_path_length(G, node, 2)`,
   direction "out" on a DiGraph and "both" on the undirected Graph; and the graph load rate.
4. One durable `insert_node` with a vector at a time.
5. Vector index bytes and resident memory per 100K vectors, Memora against hnswlib.

hnswlib runs single-threaded everywhere (the store's hnswlib does too, for determinism). The
machine may be noisy, so latencies are taken in rounds with the two systems interleaved query by
query (their order swapped every round), each percentile is the median of the per-round values,
and ingest alternates the two systems batch by batch. Progress goes to stderr; the table and one
`BENCH_JSON ` line go to stdout.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO, TypeVar

import attrs
import hnswlib
import networkx as nx
import numpy as np

from memora.bench import data
from memora.core import constants
from memora.core.types import Direction, InsertEdge, InsertNode, Metric
from memora.service.embedded import Memora

ItemT = TypeVar("ItemT")

top_k = 10
recall_min = 0.98
query_similar_ratio_max = 1.3
ingest_ratio_min = 0.7
query_related_ratio_max = 1.5
insert_p50_ms_max = 1.0
related_depth = 2
edge_kind = "links"
label = "Item"
vectors_per_report = 100_000  # Memory is reported per 100K vectors.
bytes_per_mib = 1024 * 1024
fsync_probe_record_bytes = 768  # About one insert_node entry with a 128-float vector.
insert_run_length = 100  # Durable inserts timed back to back, between runs of fsync probes.
rss_delta_bytes_min = 4 * bytes_per_mib  # Below this an RSS ratio is allocator noise.


@attrs.frozen
class Config:
    vectors: int = 100_000
    dimension: int = constants.dimension_default
    clusters: int = 100
    queries: int = 1_000
    graph_nodes: int = 100_000
    graph_edges: int = 500_000
    seed: int = 42
    efs: tuple[int, ...] = (64, 128)
    rounds: int = 3
    sources: int = 2_000  # Graph query start nodes, sampled uniformly without replacement.
    inserts: int = 2_000  # Durable single inserts.
    warmup: int = 50  # Untimed operations per system before each measurement.
    batch_size: int = 10_000  # Commands per `batch` call, and vectors per `add_items` call.
    metric: Metric = "cosine"

    def check(self) -> None:
        """Raise ValueError for a configuration the benchmark cannot run."""
        if self.vectors < top_k or self.queries < 1 or self.rounds < 1:
            raise ValueError(f"need vectors >= {top_k}, queries >= 1 and rounds >= 1")
        if not 1 <= self.batch_size <= constants.batch_commands_max:
            raise ValueError(f"batch size must be within 1..{constants.batch_commands_max}")
        if any(ef < top_k or ef > constants.hnsw_ef_search_max for ef in self.efs):
            raise ValueError(f"every ef must be within {top_k}..{constants.hnsw_ef_search_max}")
        if self.graph_nodes < 2 or self.graph_edges < self.graph_nodes:
            raise ValueError("need graph nodes >= 2 and graph edges >= graph nodes")
        if self.sources < 1 or self.inserts < 1 or self.warmup < 0:
            raise ValueError("need sources >= 1, inserts >= 1 and warmup >= 0")


@attrs.frozen
class Row:
    """One line of the result table."""

    name: str
    memora: str
    baseline: str
    ratio: float | None
    target: str
    status: str  # PASS, FAIL or info


# -- Measuring ------------------------------------------------------------------------------------


class Progress:
    """One line per phase on stderr, with the time since the start of the run."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.start_ns = time.perf_counter_ns()

    def __call__(self, message: str) -> None:
        elapsed_s = (time.perf_counter_ns() - self.start_ns) / 1e9
        self.stream.write(f"[bench {elapsed_s:7.1f} s] {message}\n")
        self.stream.flush()


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_malloc_trim()


def resident_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (pages resident * page size).

    Free heap memory is handed back to the system first (glibc's malloc_trim), so that memory a
    phase freed and another phase reuses is not counted as growth of neither or the wrong one.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def percentiles_us(samples_ns: Sequence[int]) -> dict[str, float]:
    p50, p90, p99 = np.percentile(np.asarray(samples_ns, dtype=np.float64), [50, 90, 99])
    return {"p50_us": float(p50) / 1e3, "p90_us": float(p90) / 1e3, "p99_us": float(p99) / 1e3}


def summarise_rounds(rounds_ns: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Each percentile as the median over rounds of that round's percentile; per-round p50s too."""
    per_round = [percentiles_us(samples) for samples in rounds_ns]
    summary: dict[str, Any] = {
        key: float(np.median([values[key] for values in per_round])) for key in per_round[0]
    }
    summary["round_p50_us"] = [values["p50_us"] for values in per_round]
    summary["operations"] = sum(len(samples) for samples in rounds_ns)
    return summary


def interleaved_latencies(
    systems: Sequence[tuple[str, Callable[[ItemT], Any]]],
    items: Sequence[ItemT],
    rounds: int,
    warmup: int,
    inspect: Callable[[str, int, Any], None] | None = None,
) -> dict[str, list[list[int]]]:
    """Time every system on every item, item by item, for `rounds` rounds.

    The systems take turns on each item, and the order of turns is reversed every round, so a
    slow spell of the machine hits both. `inspect(system, item_number, result)` sees each result
    of the first round, outside the timed region.
    """
    for _name, operation in systems:
        for item in items[:warmup]:
            operation(item)
    samples: dict[str, list[list[int]]] = {name: [] for name, _ in systems}
    for round_number in range(rounds):
        order = list(systems) if round_number % 2 == 0 else list(reversed(systems))
        round_samples: dict[str, list[int]] = {name: [] for name, _ in systems}
        gc.collect()
        for item_number, item in enumerate(items):
            for name, operation in order:
                started = time.perf_counter_ns()
                result = operation(item)
                elapsed = time.perf_counter_ns() - started
                round_samples[name].append(elapsed)
                if inspect is not None and round_number == 0:
                    inspect(name, item_number, result)
        for name in samples:
            samples[name].append(round_samples[name])
    return samples


# -- The run --------------------------------------------------------------------------------------


@attrs.define
class VectorPhase:
    """The vector store and the hnswlib index, loaded side by side, and what the load cost."""

    store: Memora
    index: hnswlib.Index
    row_of_id: dict[int, int]
    memora_ns: list[int]
    hnswlib_ns: list[int]
    memora_rss_bytes: int
    hnswlib_rss_bytes: int


def run(config: Config, out: TextIO, progress_stream: TextIO) -> dict[str, Any]:
    """Run every phase, print the table and the JSON line to `out`, and return the results."""
    config.check()
    progress = Progress(progress_stream)
    root = tempfile.mkdtemp(prefix="memora-bench-", dir="/tmp")
    try:
        metrics = _measure(config, root, progress)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = table_rows(metrics)
    result = {
        "bench": "core",
        "config": attrs.asdict(config),
        "machine": machine_info(),
        "metrics": metrics,
        "rows": [attrs.asdict(row) for row in rows],
        "all_pass": all(row.status != "FAIL" for row in rows),
    }
    write_table(rows, metrics, out)
    out.write("BENCH_JSON " + json.dumps(result, sort_keys=True) + "\n")
    out.flush()
    progress("done")
    return result


def _measure(config: Config, root: str, progress: Progress) -> dict[str, Any]:
    progress(f"generating {config.vectors} vectors, {config.queries} queries and exact top-{top_k}")
    vectors = data.vector_data(
        config.seed,
        config.vectors,
        config.dimension,
        config.clusters,
        config.queries,
        config.inserts + config.warmup,
        config.metric,
        top_k,
    )
    metrics: dict[str, Any] = {}
    progress(f"ingesting {config.vectors} vectors into Memora and hnswlib, batch by batch")
    phase = load_vectors(config, vectors, os.path.join(root, "vectors"), progress)
    try:
        metrics["ingest"] = ingest_metrics(config, phase)
        metrics["memory"] = memory_metrics(config, phase)
        for ef in config.efs:
            progress(f"query_similar at ef={ef}: {config.rounds} rounds of {config.queries}")
            metrics[f"query_similar_ef{ef}"] = similar_metrics(config, vectors, phase, ef)
        progress(f"{config.inserts} durable single inserts with a vector")
        metrics["query_similar_verdict"] = similar_verdict(metrics, config.efs)
        metrics["insert_node"] = insert_metrics(config, vectors, phase.store, root)
    finally:
        phase.store.close()
    del phase
    gc.collect()
    progress(f"generating a graph: {config.graph_nodes} nodes, ~{config.graph_edges} edges")
    graph = data.power_law_graph(config.seed, config.graph_nodes, config.graph_edges)
    metrics.update(graph_metrics(config, graph, os.path.join(root, "graph"), progress))
    return metrics


# -- Vectors --------------------------------------------------------------------------------------


def new_hnswlib_index(config: Config) -> hnswlib.Index:
    index = hnswlib.Index(space=config.metric, dim=config.dimension)
    index.init_index(
        max_elements=config.vectors,
        ef_construction=constants.hnsw_ef_construction,
        M=constants.hnsw_m,
        random_seed=config.seed,
    )
    index.set_num_threads(1)
    return index


def load_vectors(
    config: Config, vectors: data.VectorData, directory: str, progress: Progress
) -> VectorPhase:
    """Load the same batches into both systems, alternating which goes first, timing each call.

    Resident memory is attributed by summing the change in RSS across each system's own calls,
    opening the store and creating the index included.
    """
    gc.collect()
    resident_before = resident_bytes()
    store = Memora.open(directory, dimension=config.dimension, metric=config.metric)
    resident_after_open = resident_bytes()
    index = new_hnswlib_index(config)
    phase = VectorPhase(store, index, {}, [], [], 0, 0)
    phase.memora_rss_bytes = resident_after_open - resident_before
    phase.hnswlib_rss_bytes = resident_bytes() - resident_after_open
    for batch_number, start in enumerate(range(0, config.vectors, config.batch_size)):
        rows = vectors.vectors[start : start + config.batch_size]
        commands = [InsertNode(label, vector=row) for row in rows]
        ids = np.arange(start, start + rows.shape[0])
        memora_first = batch_number % 2 == 0
        for system in ("memora", "hnswlib") if memora_first else ("hnswlib", "memora"):
            resident_before = resident_bytes()
            started = time.perf_counter_ns()
            if system == "memora":
                nodes = store.batch(commands)
            else:
                index.add_items(rows, ids, num_threads=1)
            elapsed = time.perf_counter_ns() - started
            resident_delta = resident_bytes() - resident_before
            if system == "memora":
                phase.memora_ns.append(elapsed)
                phase.memora_rss_bytes += resident_delta
            else:
                phase.hnswlib_ns.append(elapsed)
                phase.hnswlib_rss_bytes += resident_delta
        phase.row_of_id.update((node.id, start + n) for n, node in enumerate(nodes))
        del commands, nodes
        progress(f"  ingested {start + rows.shape[0]} / {config.vectors}")
    assert len(phase.row_of_id) == config.vectors
    assert index.get_current_count() == config.vectors
    return phase


def ingest_metrics(config: Config, phase: VectorPhase) -> dict[str, Any]:
    memora_rate = config.vectors / (sum(phase.memora_ns) / 1e9)
    hnswlib_rate = config.vectors / (sum(phase.hnswlib_ns) / 1e9)
    pair_ratios = [h / m for m, h in zip(phase.memora_ns, phase.hnswlib_ns, strict=True)]
    ratio = memora_rate / hnswlib_rate
    return {
        "batch_size": config.batch_size,
        "memora_vectors_per_s": memora_rate,
        "hnswlib_vectors_per_s": hnswlib_rate,
        "memora_seconds": sum(phase.memora_ns) / 1e9,
        "hnswlib_seconds": sum(phase.hnswlib_ns) / 1e9,
        "ratio": ratio,
        "median_batch_ratio": float(np.median(pair_ratios)),
        "target_ratio_min": ingest_ratio_min,
        "pass": bool(ratio >= ingest_ratio_min),
    }


def memory_metrics(config: Config, phase: VectorPhase) -> dict[str, Any]:
    stats = phase.store.stats()
    assert stats["vectors"] == config.vectors, stats

    def per_100k_mib(size_bytes: int) -> float:
        return size_bytes * vectors_per_report / config.vectors / bytes_per_mib

    index_bytes = int(stats["vector_index_bytes"])
    hnswlib_bytes = int(phase.index.index_file_size())
    return {
        "memora_vector_index_bytes": index_bytes,
        "memora_vector_index_mib_per_100k": per_100k_mib(index_bytes),
        "memora_rss_delta_bytes": phase.memora_rss_bytes,
        "memora_rss_mib_per_100k": per_100k_mib(phase.memora_rss_bytes),
        "hnswlib_index_bytes": hnswlib_bytes,
        "hnswlib_index_mib_per_100k": per_100k_mib(hnswlib_bytes),
        "hnswlib_rss_delta_bytes": phase.hnswlib_rss_bytes,
        "hnswlib_rss_mib_per_100k": per_100k_mib(phase.hnswlib_rss_bytes),
        "vector_segments": stats["vector_segments"],
        "index_ratio": index_bytes / hnswlib_bytes,
        # Too small a delta to divide by means the run was too small to say.
        "rss_ratio": phase.memora_rss_bytes / phase.hnswlib_rss_bytes
        if phase.hnswlib_rss_bytes >= rss_delta_bytes_min
        else None,
    }


def similar_metrics(
    config: Config, vectors: data.VectorData, phase: VectorPhase, ef: int
) -> dict[str, Any]:
    store, index, row_of_id = phase.store, phase.index, phase.row_of_id
    index.set_ef(ef)
    found: dict[str, list[list[int]]] = {"memora": [], "hnswlib": []}

    def memora_query(query: np.ndarray) -> Any:
        return store.query_similar(query, top_k=top_k, ef=ef)

    def hnswlib_query(query: np.ndarray) -> Any:
        return index.knn_query(query, k=top_k, num_threads=1)

    def inspect(name: str, item_number: int, result: Any) -> None:
        if name == "memora":
            found[name].append([row_of_id[node.id] for node, _ in result])
        else:
            found[name].append([int(label) for label in result[0][0]])

    queries = list(vectors.queries)
    samples = interleaved_latencies(
        [("memora", memora_query), ("hnswlib", hnswlib_query)],
        queries,
        config.rounds,
        config.warmup,
        inspect,
    )
    memora = summarise_rounds(samples["memora"])
    hnswlib_summary = summarise_rounds(samples["hnswlib"])
    memora["recall_at_10"] = data.recall_at_k(found["memora"], vectors.neighbours)
    hnswlib_summary["recall_at_10"] = data.recall_at_k(found["hnswlib"], vectors.neighbours)
    ratio = memora["p50_us"] / hnswlib_summary["p50_us"]
    return {
        "ef": ef,
        "memora": memora,
        "hnswlib": hnswlib_summary,
        "ratio_p50": ratio,
        "target_ratio_max": query_similar_ratio_max,
        "recall_min": recall_min,
        "pass": bool(ratio <= query_similar_ratio_max and memora["recall_at_10"] >= recall_min),
    }


def similar_verdict(metrics: dict[str, Any], efs: Sequence[int]) -> dict[str, Any]:
    """The verdict comes from the lowest ef at which Memora reaches the recall target."""
    reached = [
        metrics[f"query_similar_ef{ef}"]
        for ef in sorted(efs)
        if metrics[f"query_similar_ef{ef}"]["memora"]["recall_at_10"] >= recall_min
    ]
    if not reached:
        return {"ef": None, "ratio_p50": None, "pass": False}
    chosen = reached[0]
    return {"ef": chosen["ef"], "ratio_p50": chosen["ratio_p50"], "pass": chosen["pass"]}


def insert_metrics(
    config: Config, vectors: data.VectorData, store: Memora, directory: str
) -> dict[str, Any]:
    """Durable single inserts into the loaded store: each call appends, fsyncs and applies.

    Inserts run back to back in runs of `insert_run_length`, so work a call leaves behind (its
    graph insert, which the store does after the reply) is charged to the next call, as for a
    writer that never pauses. After each run, the disk's own floor is measured as many times: a
    raw append of a record of similar size and an fdatasync, on the same file system. Other
    processes that write to the disk can raise that floor by milliseconds, and the floor shows
    when that happened.
    """
    extra = list(vectors.extra)
    for vector in extra[: config.warmup]:
        store.insert_node(label, vector=vector)
    gc.collect()
    samples: list[int] = []
    floor_samples: list[int] = []
    record = bytes(fsync_probe_record_bytes)
    descriptor = os.open(
        os.path.join(directory, "fsync-probe"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
    )
    try:
        timed = extra[config.warmup :]
        for run_start in range(0, len(timed), insert_run_length):
            run = timed[run_start : run_start + insert_run_length]
            for vector in run:
                started = time.perf_counter_ns()
                store.insert_node(label, vector=vector)
                samples.append(time.perf_counter_ns() - started)
            for _ in run:
                started = time.perf_counter_ns()
                os.write(descriptor, record)
                os.fdatasync(descriptor)
                floor_samples.append(time.perf_counter_ns() - started)
    finally:
        os.close(descriptor)
    summary: dict[str, Any] = percentiles_us(samples)
    summary["operations"] = len(samples)
    summary["fsync_floor"] = percentiles_us(floor_samples)
    summary["target_p50_us_max"] = insert_p50_ms_max * 1e3
    summary["pass"] = bool(summary["p50_us"] <= insert_p50_ms_max * 1e3)
    return summary


# -- Graph ----------------------------------------------------------------------------------------


def graph_metrics(
    config: Config, graph: data.GraphData, directory: str, progress: Progress
) -> dict[str, Any]:
    progress(f"loading {graph.node_count} nodes and {graph.edge_count} edges into Memora")
    metrics: dict[str, Any] = {}
    store = Memora.open(directory, dimension=config.dimension, metric=config.metric)
    try:
        node_ids, metrics["graph_load"] = load_graph(config, graph, store, progress)
        progress("building the networkx DiGraph and Graph")
        started = time.perf_counter_ns()
        directed: nx.DiGraph = nx.DiGraph()
        directed.add_nodes_from(range(graph.node_count))
        directed.add_edges_from(zip(graph.sources.tolist(), graph.targets.tolist(), strict=True))
        undirected = directed.to_undirected()
        metrics["graph_load"]["networkx_build_seconds"] = (time.perf_counter_ns() - started) / 1e9
        rng = np.random.default_rng([config.seed, 3])
        count = min(config.sources, graph.node_count)
        sources = rng.choice(graph.node_count, size=count, replace=False).tolist()
        baselines: list[tuple[Direction, nx.Graph]] = [("out", directed), ("both", undirected)]
        for direction, baseline in baselines:
            progress(f"query_related depth 2 {direction}: {config.rounds} rounds of {count}")
            metrics[f"query_related_{direction}"] = related_metrics(
                config, store, node_ids, baseline, sources, direction
            )
    finally:
        store.close()
    return metrics


def load_graph(
    config: Config, graph: data.GraphData, store: Memora, progress: Progress
) -> tuple[list[int], dict[str, Any]]:
    """Nodes then edges through `batch`, `batch_size` commands a call; returns node ids by row."""
    node_ids: list[int] = []
    node_ns = 0
    for start in range(0, graph.node_count, config.batch_size):
        count = min(config.batch_size, graph.node_count - start)
        node_commands = [InsertNode(label) for _ in range(count)]
        started = time.perf_counter_ns()
        nodes = store.batch(node_commands)
        node_ns += time.perf_counter_ns() - started
        node_ids.extend(node.id for node in nodes)
    progress(f"  loaded {graph.node_count} nodes")
    sources, targets = graph.sources.tolist(), graph.targets.tolist()
    edge_ns = 0
    for start in range(0, graph.edge_count, config.batch_size):
        edge_commands = [
            InsertEdge(node_ids[source], node_ids[target], edge_kind)
            for source, target in zip(
                sources[start : start + config.batch_size],
                targets[start : start + config.batch_size],
                strict=True,
            )
        ]
        started = time.perf_counter_ns()
        store.batch(edge_commands)
        edge_ns += time.perf_counter_ns() - started
        if (start // config.batch_size) % 10 == 9:
            progress(f"  loaded {start + len(edge_commands)} / {graph.edge_count} edges")
    stats = store.stats()
    assert stats["nodes"] == graph.node_count and stats["edges"] == graph.edge_count, stats
    total_s = (node_ns + edge_ns) / 1e9
    return node_ids, {
        "nodes": graph.node_count,
        "edges": graph.edge_count,
        "memora_seconds": total_s,
        "memora_commands_per_s": (graph.node_count + graph.edge_count) / total_s,
        "memora_nodes_per_s": graph.node_count / (node_ns / 1e9),
        "memora_edges_per_s": graph.edge_count / (edge_ns / 1e9),
    }


def related_metrics(
    config: Config,
    store: Memora,
    node_ids: list[int],
    baseline: nx.Graph,
    sources: list[int],
    direction: Direction,
) -> dict[str, Any]:
    """2-hop neighbourhoods: the same start nodes for both; answers compared (count and sum)."""
    row_of_id = {node_id: row for row, node_id in enumerate(node_ids)}
    answers: dict[str, list[tuple[int, int, tuple[int, ...]]]] = {"memora": [], "networkx": []}

    def memora_query(source: int) -> Any:
        return store.query_related(node_ids[source], depth=related_depth, direction=direction)

    def networkx_query(source: int) -> Any:
        return nx.single_source_shortest_path_length(baseline, source, cutoff=related_depth)

    def records_query(source: int) -> Any:
        return store.query_related_nodes(node_ids[source], depth=related_depth, direction=direction)

    def inspect(name: str, item_number: int, result: Any) -> None:
        if name == "memora_records":
            assert [node.id for node, _ in result] == list(answers["memora"][-1][2])
            return
        if name == "memora":
            rows = [row_of_id[node_id] for node_id in result]
            answers[name].append((len(rows), sum(rows), tuple(result)))
        else:
            source = sources[item_number]
            answers[name].append((len(result) - 1, sum(result) - source, ()))

    samples = interleaved_latencies(
        [
            ("memora", memora_query),
            ("networkx", networkx_query),
            ("memora_records", records_query),
        ],
        sources,
        config.rounds,
        config.warmup,
        inspect,
    )
    mismatches = sum(
        m[:2] != n[:2] for m, n in zip(answers["memora"], answers["networkx"], strict=True)
    )
    memora = summarise_rounds(samples["memora"])
    networkx_summary = summarise_rounds(samples["networkx"])
    ratio = memora["p50_us"] / networkx_summary["p50_us"]
    return {
        "direction": direction,
        "sources": len(sources),
        "mean_reached": float(np.mean([count for count, _, _ in answers["networkx"]])),
        "answer_mismatches": mismatches,
        "memora": memora,
        "networkx": networkx_summary,
        "memora_records": summarise_rounds(samples["memora_records"]),
        "ratio_p50": ratio,
        "target_ratio_max": query_related_ratio_max,
        "pass": bool(ratio <= query_related_ratio_max and mismatches == 0),
    }


# -- Reporting ------------------------------------------------------------------------------------


def table_rows(metrics: dict[str, Any]) -> list[Row]:
    rows = _similar_rows(metrics)
    ingest = metrics["ingest"]
    rows.append(
        Row(
            "batch ingest (vectors/s)",
            f"{ingest['memora_vectors_per_s']:,.0f}/s",
            f"{ingest['hnswlib_vectors_per_s']:,.0f}/s",
            ingest["ratio"],
            f">= {ingest_ratio_min}x hnswlib",
            _status(ingest["pass"]),
        )
    )
    for direction in ("out", "both"):
        related = metrics[f"query_related_{direction}"]
        rows.append(
            Row(
                f"query_related 2-hop {direction} p50",
                _us(related["memora"]["p50_us"]),
                _us(related["networkx"]["p50_us"]),
                related["ratio_p50"],
                f"<= {query_related_ratio_max}x networkx, same answers",
                _status(related["pass"]),
            )
        )
        records_p50 = related["memora_records"]["p50_us"]
        rows.append(
            Row(
                f"query_related_nodes 2-hop {direction} p50 (records too)",
                _us(records_p50),
                _us(related["networkx"]["p50_us"]),
                records_p50 / related["networkx"]["p50_us"],
                "(report)",
                "info",
            )
        )
    load = metrics["graph_load"]
    rows.append(
        Row(
            "graph load (nodes+edges/s)",
            f"{load['memora_commands_per_s']:,.0f}/s",
            f"nx build {load['networkx_build_seconds']:.1f} s",
            None,
            "(report)",
            "info",
        )
    )
    insert = metrics["insert_node"]
    rows.append(
        Row(
            "durable insert_node p50",
            _us(insert["p50_us"]),
            f"fsync floor {_us(insert['fsync_floor']['p50_us'])}",
            None,
            f"<= {insert_p50_ms_max:g} ms",
            _status(insert["pass"]),
        )
    )
    rows.extend(_memory_rows(metrics["memory"]))
    return rows


def _similar_rows(metrics: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for key, row in metrics.items():
        if not key.startswith("query_similar_ef"):
            continue
        rows.append(
            Row(
                f"query_similar p50 ef={row['ef']}",
                f"{_us(row['memora']['p50_us'])} r={row['memora']['recall_at_10']:.3f}",
                f"{_us(row['hnswlib']['p50_us'])} r={row['hnswlib']['recall_at_10']:.3f}",
                row["ratio_p50"],
                f"<= {query_similar_ratio_max}x, recall >= {recall_min}",
                _status(row["pass"]),
            )
        )
    verdict = metrics["query_similar_verdict"]
    rows.append(
        Row(
            "query_similar verdict",
            f"ef={verdict['ef']} (lowest ef with recall >= {recall_min})",
            "",
            verdict["ratio_p50"],
            f"<= {query_similar_ratio_max}x",
            _status(verdict["pass"]),
        )
    )
    return rows


def _memory_rows(memory: dict[str, Any]) -> list[Row]:
    return [
        Row(
            "vector index MiB per 100K",
            f"{memory['memora_vector_index_mib_per_100k']:.1f}",
            f"{memory['hnswlib_index_mib_per_100k']:.1f}",
            memory["index_ratio"],
            "(report)",
            "info",
        ),
        Row(
            "RSS delta MiB per 100K",
            f"{memory['memora_rss_mib_per_100k']:.1f}",
            f"{memory['hnswlib_rss_mib_per_100k']:.1f}",
            memory["rss_ratio"],
            "(report)",
            "info",
        ),
    ]


def _status(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _us(value: float) -> str:
    return f"{value:,.1f} us"


def write_table(rows: list[Row], metrics: dict[str, Any], out: TextIO) -> None:
    headers = ("metric", "Memora", "baseline", "ratio", "target", "status")
    cells = [
        (row.name, row.memora, row.baseline, _ratio(row.ratio), row.target, row.status)
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [headers, *cells]) for i in range(len(headers))]
    for line in [headers, tuple("-" * width for width in widths), *cells]:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            + "\n"
        )
    out.write("\nlatency detail (us, median over rounds: p50 / p90 / p99)\n")
    for key, value in metrics.items():
        if key.startswith(("query_similar_ef", "query_related_")):
            for system in ("memora", "hnswlib", "networkx"):
                if system in value:
                    s = value[system]
                    out.write(
                        f"  {key:<22} {system:<8} {s['p50_us']:9.1f} / {s['p90_us']:9.1f} / "
                        f"{s['p99_us']:9.1f}  (round p50s "
                        + ", ".join(f"{p:.1f}" for p in s["round_p50_us"])
                        + ")\n"
                    )
    insert = metrics["insert_node"]
    out.write(
        f"  {'insert_node':<22} {'memora':<8} {insert['p50_us']:9.1f} / {insert['p90_us']:9.1f} / "
        f"{insert['p99_us']:9.1f}\n"
    )
    floor = insert["fsync_floor"]
    out.write(
        f"  {'append+fdatasync floor':<22} {'disk':<8} {floor['p50_us']:9.1f} / "
        f"{floor['p90_us']:9.1f} / {floor['p99_us']:9.1f}\n\n"
    )


def machine_info() -> dict[str, Any]:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": version("numpy"),
        "hnswlib": version("hnswlib"),
        "networkx": version("networkx"),
    }
