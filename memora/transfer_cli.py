"""`memora import` and `memora export`: the reference memory server's `memory.jsonl`, in and out.

    memora import FILE [--data-dir DIR | --server URL] [--token T] [--namespace NS]
                       [--embedder SPEC] [--chunk N]
    memora export [--format jsonl] [--output FILE] [--data-dir DIR | --server URL] [--token T]
                  [--namespace NS] [--as-of INDEX]

FILE is the reference server's `memory.jsonl`, or its legacy `memory.json` (the same lines, or
one `{"entities": [...], "relations": [...]}` object). Like `memora mcp`, both open the node on
`--data-dir` (default ./memora_data) in this process, or with `--server URL` call the tools of
a running `memora serve` at its MCP endpoint (http://HOST:9090/mcp), with `--token` (default
MEMORA_TOKEN) as the bearer token. A data directory that `memora serve` holds is locked: use
`--server` then. `--namespace` defaults to the MCP namespace (`memory`; a server's own
`mcp_namespace` over `--server`); `--embedder` (embedded only) must be the one the namespace was
made with. What an import does and skips is in `memora.service.jsonl_io`; it is idempotent.

An import prints its progress on stderr every chunk of a long file, then a summary and what it
skipped on stdout. An export writes the file to stdout or, with `--output`, to a temporary file
beside FILE that is synced, then renamed over it, so FILE is never half written. `--as-of INDEX`
exports the memory as it was at that commit index (an import's summary names the index it
reached). Exit code 0 on success, 1 on failure (one line on stderr says why), 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import IO, Any, Final, TextIO

import httpx2
import trio
from mcp.shared.exceptions import MCPError

from memora.api.auth import OPEN_ACCESS_PRINCIPAL
from memora.core import constants, validate
from memora.core.errors import MemoraError, ValidationError
from memora.core.types import Provenance
from memora.net.driver import DataDirLockedError, NodeDriver
from memora.net.raft_storage import RAFT_DIRECTORY, RaftStorageError
from memora.service.embedding import DEFAULT_EMBEDDER_SPEC, Embedder, embedder_from_spec
from memora.service.jsonl_io import (
    EmbeddedStore,
    ExportCounts,
    GraphStore,
    ImportReport,
    MemoryFileError,
    ParsedGraph,
    Problem,
    StoreError,
    call_texts_max,
    chunk_entities_default,
    decode_memory_file,
    export_graph,
    export_page_entities,
    import_graph,
    open_remote_store,
    parse_memory_file,
    with_namespace,
)
from memora.service.knowledge_graph import (
    DEFAULT_MCP_NAMESPACE,
    KnowledgeGraph,
    WriteContext,
    entities_per_call_max,
)

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
TOKEN_VARIABLE: Final = "MEMORA_TOKEN"
DEFAULT_DATA_DIR: Final = "memora_data"
# Skipped items and notes printed one per line; the rest are counted.
details_shown_max: Final = 50


class TransferFailed(Exception):
    """A failure the user can act on; its message is the line printed."""


# -- Arguments ------------------------------------------------------------------------------------


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="memory.jsonl (or a legacy memory.json)")
    _add_place_arguments(parser)
    parser.add_argument(
        "--embedder",
        help=f"embedded only: {DEFAULT_EMBEDDER_SPEC} (default), hashing[:DIM] or "
        "openai:BASE_URL; the one the namespace was made with",
    )
    parser.add_argument(
        "--chunk",
        type=_chunk_size,
        default=chunk_entities_default,
        metavar="N",
        help=f"entities per call, 1 to {entities_per_call_max} (default {chunk_entities_default}); "
        f"fewer when their texts would go over {call_texts_max}",
    )


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("jsonl",), default="jsonl", help="jsonl (default)")
    parser.add_argument("--output", metavar="FILE", help="file to write (default: stdout)")
    _add_place_arguments(parser)
    parser.add_argument(
        "--as-of", type=_index, metavar="INDEX", help="the memory as it was at a commit index"
    )


def _add_place_arguments(parser: argparse.ArgumentParser) -> None:
    place = parser.add_mutually_exclusive_group()
    place.add_argument("--data-dir", help=f"the node's data directory (default {DEFAULT_DATA_DIR})")
    place.add_argument("--server", metavar="URL", help="a running server's MCP endpoint")
    parser.add_argument("--token", help=f"bearer token for --server (default: ${TOKEN_VARIABLE})")
    parser.add_argument(
        "--namespace",
        help=f"namespace of the memory (default {DEFAULT_MCP_NAMESPACE}, or the server's)",
    )


def _chunk_size(text: str) -> int:
    size = _integer(text)
    if not 1 <= size <= entities_per_call_max:
        raise argparse.ArgumentTypeError(f"must be from 1 to {entities_per_call_max}")
    return size


def _index(text: str) -> int:
    index = _integer(text)
    if index < 0:
        raise argparse.ArgumentTypeError("must be a commit index (an integer >= 0)")
    return index


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _usage(err: TextIO, prefix: str, error: MemoraError) -> int:
    """A bad value that argparse could not check: one line, exit code 2."""
    _say(err, prefix, f"{error.field or 'argument'}: {error.message}")
    return EXIT_USAGE


# -- Import ---------------------------------------------------------------------------------------

_IMPORT: Final = "memora import:"


def import_main(
    arguments: argparse.Namespace, environ: Mapping[str, str], out: TextIO, err: TextIO
) -> int:
    try:
        namespace = _namespace(arguments)
        embedder = _embedder(arguments)
    except MemoraError as error:
        return _usage(err, _IMPORT, error)
    path = arguments.file
    try:
        parsed = _read_memory_file(path)
    except TransferFailed as failure:
        _say(err, _IMPORT, str(failure))
        return EXIT_FAILURE
    report = ImportReport()
    progress = _progress_printer(err, arguments.chunk)
    started: list[bool] = []

    async def work(store: GraphStore) -> None:
        started.append(True)
        await import_graph(store, parsed, arguments.chunk, progress, report)

    try:
        if arguments.server:
            token = arguments.token or environ.get(TOKEN_VARIABLE)
            url = with_namespace(arguments.server, arguments.namespace)
            _run_remote(url, token, _source(path), work)
            place = arguments.server
        else:
            assert embedder is not None
            data_dir = arguments.data_dir or DEFAULT_DATA_DIR
            index = _run_embedded(data_dir, embedder, namespace, _source(path), work, create=True)
            place = f"{data_dir}, commit index {index}"
    except TransferFailed as failure:
        if started:
            _print_summary(out, f"stopped importing {path}", report, parsed.problems)
            _say(err, _IMPORT, f"{failure}; what was imported stays, importing again is safe")
        else:
            _say(err, _IMPORT, str(failure))
        return EXIT_FAILURE
    title = f"imported {path} into namespace {namespace!r} of {place}"
    _print_summary(out, title, report, parsed.problems)
    return 0


def _read_memory_file(path: str) -> ParsedGraph:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise TransferFailed(f"cannot read {path}: {error.strerror or error}") from None
    try:
        return parse_memory_file(decode_memory_file(data))
    except MemoryFileError as error:
        raise TransferFailed(f"{path} is not a memory file: {error}") from None


def _namespace(arguments: argparse.Namespace) -> str:
    if arguments.namespace is None:
        return DEFAULT_MCP_NAMESPACE
    return validate.namespace_name(arguments.namespace)


def _embedder(arguments: argparse.Namespace) -> Embedder | None:
    """The embedder of an embedded import; a server embeds with its own."""
    if arguments.server:
        if arguments.embedder:
            message = "applies to --data-dir only (a server embeds with its own)"
            raise ValidationError(message, "--embedder")
        return None
    return embedder_from_spec(arguments.embedder or DEFAULT_EMBEDDER_SPEC)


def _source(path: str) -> str:
    """The provenance of imported facts: which file they came from."""
    source = f"memora import {os.path.basename(path)}"
    while len(source.encode("utf-8", "surrogatepass")) > constants.source_bytes_max:
        source = source[:-1]
    return source


def _progress_printer(err: TextIO, chunk: int) -> Callable[[str, int, int], None]:
    """Prints `entities 1200/10000` after each chunk of a phase that takes several."""

    def progress(phase: str, done: int, total: int) -> None:
        if total > chunk:
            _say(err, _IMPORT, f"{phase} {done}/{total}")

    return progress


def _print_summary(
    out: TextIO, title: str, report: ImportReport, problems: tuple[Problem, ...]
) -> None:
    r = report
    lines = [
        title,
        f"  entities      {r.entities_total}: {r.entities_created} created, "
        f"{r.entities_present} already present, {r.entities_skipped} skipped"
        + (f" ({r.entities_merged} repeated names merged)" if r.entities_merged else ""),
        f"  observations  {r.observations_total}: {r.observations_added} added, "
        f"{r.observations_present} already present, {r.observations_skipped} skipped"
        + (f" ({r.observations_repeated} repeats dropped)" if r.observations_repeated else ""),
        f"  relations     {r.relations_total}: {r.relations_created} created, "
        f"{r.relations_present} already present, {r.relations_skipped} skipped"
        + (f" ({r.relations_repeated} repeats dropped)" if r.relations_repeated else ""),
    ]
    if problems:
        lines.append(f"  file          {_count(len(problems), 'problem')}: skipped (below)")
    details = [*problems, *r.skipped, *r.notes]
    lines += [f"  {detail}" for detail in details[:details_shown_max]]
    if len(details) > details_shown_max:
        lines.append(f"  ... and {len(details) - details_shown_max} more")
    print("\n".join(lines), file=out, flush=True)


# -- Export ---------------------------------------------------------------------------------------

_EXPORT: Final = "memora export:"


def export_main(
    arguments: argparse.Namespace, environ: Mapping[str, str], out: TextIO, err: TextIO
) -> int:
    try:
        namespace = _namespace(arguments)
    except MemoraError as error:
        return _usage(err, _EXPORT, error)
    output = arguments.output
    exported: list[ExportCounts] = []
    try:
        with _output(output, out) as write:

            async def work(store: GraphStore) -> None:
                # Embedded: one read, so relations keep their creation order at any size.
                # A server: pages, so no answer is the whole memory.
                pages = export_page_entities if arguments.server else None
                counts = await export_graph(
                    store, write, as_of=arguments.as_of, page_entities=pages
                )
                exported.append(counts)

            if arguments.server:
                token = arguments.token or environ.get(TOKEN_VARIABLE)
                url = with_namespace(arguments.server, arguments.namespace)
                _run_remote(url, token, None, work)
            else:
                data_dir = arguments.data_dir or DEFAULT_DATA_DIR
                reader = embedder_from_spec("hashing")  # Reads embed nothing; this loads nothing.
                _run_embedded(data_dir, reader, namespace, None, work, create=False)
    except TransferFailed as failure:
        _say(err, _EXPORT, str(failure))
        return EXIT_FAILURE
    except OSError as error:
        _say(err, _EXPORT, f"cannot write {output or 'stdout'}: {error.strerror or error}")
        return EXIT_FAILURE
    counts = exported[0]
    what = f"{_count(counts.entities, 'entity', 'entities')} and "
    what += _count(counts.relations, "relation")
    as_of = "" if arguments.as_of is None else f" as of commit index {arguments.as_of}"
    _say(err, _EXPORT, f"{what}{as_of} to {output or 'stdout'}")
    return 0


class _Sink:
    """Writes text out. The first error stops the writing and is kept, so that a reader that
    went away (a closed pipe) is not taken for the server failing."""

    def __init__(self, write: Callable[[str], object], flush: Callable[[], object]) -> None:
        self._write = write
        self._flush = flush
        self.error: OSError | None = None

    @classmethod
    def utf8(cls, stream: IO[bytes]) -> _Sink:
        return cls(lambda text: stream.write(text.encode("utf-8")), stream.flush)

    def write(self, text: str) -> None:
        if self.error is None:
            try:
                self._write(text)
            except OSError as error:
                self.error = error

    def finish(self) -> None:
        """Flush, then raise the first error if there was one."""
        if self.error is None:
            try:
                self._flush()
            except OSError as error:
                self.error = error
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def _output(path: str | None, out: TextIO) -> Iterator[Callable[[str], object]]:
    """A `write(text)` into `path`, which is replaced only once the export is whole; or into
    `out` as it comes."""
    if path is None:
        out.flush()
        buffer = getattr(out, "buffer", None)  # Bytes, whatever the locale's encoding.
        sink = _Sink(out.write, out.flush) if buffer is None else _Sink.utf8(buffer)
        try:
            yield sink.write
            sink.finish()
        except BrokenPipeError:
            _silence(out)  # The reader left (`| head`): nothing more can be said there.
            raise
        return
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as file:
            sink = _Sink.utf8(file)
            yield sink.write
            sink.finish()
            os.fchmod(file.fileno(), _file_mode(path))
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _silence(out: TextIO) -> None:
    """Point `out` at /dev/null, so that flushing it at exit does not fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)


def _file_mode(path: str) -> int:
    """The mode of the file replaced, or what a new file gets under the umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(directory: str) -> None:
    """Make the rename durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# -- Running on a node or a server ----------------------------------------------------------------


def _run_embedded(
    data_dir: str,
    embedder: Embedder,
    namespace: str,
    source: str | None,
    work: Callable[[GraphStore], Awaitable[None]],
    *,
    create: bool,
) -> int:
    """Open the node on `data_dir`, run `work` on its graph, close it; returns the applied
    index. Without `create`, a missing data directory or namespace is a failure."""
    if not create and not os.path.isdir(os.path.join(data_dir, RAFT_DIRECTORY)):
        # Opening would make a new node there: an export must not write anything.
        raise TransferFailed(f"there is no data directory {data_dir}")
    try:
        node = NodeDriver.open(data_dir)
    except (OSError, ValueError, RaftStorageError, MemoraError) as error:
        hint = ""
        if isinstance(error, DataDirLockedError):
            hint = "; a running `memora serve` holds it: use --server http://HOST:9090/mcp"
        raise TransferFailed(f"cannot open the data directory {data_dir}: {error}{hint}") from None
    graph = KnowledgeGraph(node, embedder)
    write = WriteContext(namespace, OPEN_ACCESS_PRINCIPAL, provenance=Provenance(source=source))
    failure: list[str] = []

    async def run() -> int:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            try:
                if create:
                    await graph.ensure_namespace(namespace, OPEN_ACCESS_PRINCIPAL)
                await work(EmbeddedStore(graph, write))
            except (StoreError, MemoraError) as error:
                failure.append(str(error))
            finally:
                index = int(node.health()["applied_index"])
                node.stop()
        return index

    index = trio.run(run)
    if failure:
        raise TransferFailed(failure[0])
    return index


def _run_remote(
    url: str,
    token: str | None,
    source: str | None,
    work: Callable[[GraphStore], Awaitable[None]],
) -> None:
    """Run `work` on the graph behind the MCP endpoint at `url`."""
    refusals: list[str] = []

    async def run() -> str | None:
        async with open_remote_store(url, token, source, refusals) as store:
            try:
                await work(store)
            except StoreError as error:
                return str(error)
        return None

    try:
        failure = trio.run(run)
    except* (httpx2.HTTPError, OSError, MCPError) as group:
        if refusals:
            raise TransferFailed(f"the MCP server at {url} refused: {refusals[-1]}") from None
        raise TransferFailed(f"cannot reach the MCP server at {url}: {_first(group)}") from None
    if failure is not None:
        raise TransferFailed(failure)


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else plural or singular + 's'}"


def _say(err: TextIO, prefix: str, line: str) -> None:
    print(f"{prefix} {line}", file=err, flush=True)
