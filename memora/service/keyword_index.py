"""A BM25 keyword index over the entity documents of one namespace, kept up to date incrementally.

What lives here: the tokeniser (`tokens`) and `KeywordIndex`, the keyword part of `memory_search`'s
ranking. What must not: I/O, trio, clocks or randomness. The index runs synchronously on the trio
thread right after a read barrier, so `refresh` must be cheap when little has changed.

The document of a node is its name (if any), its label, its text (if any) and the texts of its live
observations, as one bag of words. A deleted node has no document. Every live node counts as a
document, even one whose words are all stop words.

Tokens: the text is NFKC-normalised and case-folded, then split into runs of letters and digits
(`[^\\W_]+`: Unicode `\\w` without the underscore, so `snake_case` names match their parts). Words
in a small stop list (Lucene's classic English set, and "s" and "t") are dropped, and a word
longer than three letters loses a trailing plural "s" unless it ends in "ss", "us" or "is" ("cats"
-> "cat"; "class", "status" and "analysis" stay). Documents and queries use the same tokeniser, so
a conflated pair ("news" -> "new") can only make a match broader, never miss one.

Scores are Okapi BM25 with k1 = 1.2 and b = 0.75 and the non-negative IDF of Lucene,
ln(1 + (N - n + 0.5) / (n + 0.5)), where N counts documents and n those holding the term. A
query counts each distinct term once. A node's score is summed over the query's terms in the
order they first appear in the query, so `search` and `score` give bit-identical floats, whatever
order the index was built in. Results are sorted by score, then node id.

Change detection: a table of `NamespaceState` (`nodes`, `observations`) keeps each record at the
position of its first version and appends later versions to the record's list in place; records
never leave a table (a rejected command's undo runs inside `apply`, before any read). So the list
of version counts in table order grows at the end for new records and changes in place for changed
ones, and comparing it with the list saved at the last refresh finds every changed record in a few
C-speed passes. Every changed record's newest version is asserted to be newer (`updated.index`)
than anything seen before. A different `NamespaceState` object (a restored snapshot) means a
rebuild from scratch.

Measured with 10,000 nodes (20 random words of text each) and 30,000 observations (15 words each)
over a 5,000-word vocabulary, on a shared two-core machine (CPython 3.11), best of 30 to 300 runs,
each refresh right after the write it picks up:
- refresh with nothing changed: 1.0-1.5 ms (finding the changes by every record's newest
  `updated.index`, a Python-level loop, instead: 2.5 ms);
- refresh after one node's text changed: 2.0 ms; after one observation was added: 1.6 ms; after
  one was deleted: 3 ms;
- a 3-word query, `search(..., limit=10)`: 0.3 ms for three random words; 4 ms when one of them
  is in every document (the label "Person");
- `score` of 1,000 given nodes for a 3-word query: 0.4 ms;
- the first refresh (every document) or `build_as_of`: 1.4-1.7 s, and 35 MB of index. Both grow
  linearly: at 100,000 entities the first refresh blocks for some 15 s, so a caller on the event
  loop should build the index before the first query needs it.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
import unicodedata
import weakref
from collections import Counter
from collections.abc import Collection, Iterable, Sized
from typing import Final, TypeVar

from memora.core import constants, queries, validate
from memora.core.errors import LimitError, ValidationError
from memora.core.namespace import NamespaceState
from memora.core.types import Node, Observation

BM25_K1: Final = 1.2
BM25_B: Final = 0.75

_WORD: Final = re.compile(r"[^\W_]+")
# Lucene's classic English stop set (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET), and "s" and "t", the
# tails of "it's" and "don't" once split at the apostrophe. Only ever used for membership, never
# iterated, so its order cannot reach any output.
STOP_WORDS: Final = frozenset(
    {
        *("s", "t"),
        *("a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into"),
        *("is", "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then"),
        *("there", "these", "they", "this", "to", "was", "will", "with"),
    }
)
_PLURAL_KEPT: Final = ("ss", "us", "is")
SizedT = TypeVar("SizedT", bound=Sized)
# Below this many records, `_positions_changed` compares one by one instead of halving again.
_POSITIONS_SCANNED_MAX: Final = 32


def tokens(text: str) -> list[str]:
    """The index terms of `text`, in order, with repeats: what documents and queries are made of."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    # The plural rule is inline rather than a function: this runs once per word of every document.
    return [
        word[:-1] if len(word) > 3 and word[-1] == "s" and not word.endswith(_PLURAL_KEPT) else word
        for word in _WORD.findall(folded)
        if word not in STOP_WORDS
    ]


def document_tokens(node: Node, observations: Iterable[Observation]) -> list[str]:
    """The terms of a live node's document: name, label, text and its observations' texts."""
    assert not node.deleted, node.id
    terms = tokens(node.label)
    if node.name is not None:
        terms += tokens(node.name)
    if node.text is not None:
        terms += tokens(node.text)
    for observation in observations:
        assert not observation.deleted and observation.node_id == node.id, observation.id
        terms += tokens(observation.text)
    return terms


class _VersionCounts:
    """How many versions each record of one table had at the last refresh, in table order."""

    __slots__ = ("counts", "keys")

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.keys: list[int] = []  # The table's keys in its order: `counts[p]` is of `keys[p]`.

    def changed(self, table: dict[int, SizedT]) -> list[int]:
        """The ids of the records that are new or have new versions since the last call."""
        counts = list(map(len, table.values()))
        known = len(self.counts)
        assert len(counts) >= known, "a record left its table"
        # New records are at the end: set their counts aside so that the known ones compare
        # without copying, and read their keys from the end (`reversed` does not walk the rest).
        added_counts = counts[known:]
        del counts[known:]
        unchanged = counts == self.counts
        if unchanged and not added_counts:
            return []
        changed = []
        if not unchanged:
            changed = [self.keys[position] for position in _positions_changed(self.counts, counts)]
        added = list(itertools.islice(reversed(table), len(added_counts)))
        added.reverse()
        self.keys += added
        counts += added_counts
        self.counts = counts
        assert len(self.keys) == len(self.counts) == len(table)
        return changed + added


def _positions_changed(before: list[int], after: list[int]) -> list[int]:
    """The positions below `len(before)` where `after` differs from `before`, in order.

    Found by halving: comparing two slices runs at C speed, so a few changes among many records
    cost a few passes over the lists rather than a Python-level loop over every record.
    """
    found: list[int] = []
    pending = [(0, len(before))]
    while pending:
        start, stop = pending.pop()
        if before[start:stop] == after[start:stop]:
            continue
        if stop - start <= _POSITIONS_SCANNED_MAX:
            found += [p for p in range(start, stop) if before[p] != after[p]]
            continue
        middle = (start + stop) // 2
        pending += [(middle, stop), (start, middle)]  # The lower half is popped first.
    assert found == sorted(found)
    return found


class KeywordIndex:
    """BM25 (Okapi; k1=1.2, b=0.75) over the entity documents of one namespace.

    Invariants (checked by `invariants`): `_postings` holds exactly the terms of the documents in
    `_terms`, with their frequencies; a term with no postings is removed; `_vocabulary` has the
    keys of `_postings` and `_lengths` those of `_terms`; `_length_total` is the sum of `_lengths`.
    """

    def __init__(self) -> None:
        self._postings: dict[str, dict[int, int]] = {}  # term -> node id -> term frequency
        self._terms: dict[int, tuple[str, ...]] = {}  # node id -> its document's distinct terms
        # term -> the one string object of that term that `_terms` shares: each document would
        # otherwise hold copies of its own, half of the index's memory.
        self._vocabulary: dict[str, str] = {}
        self._lengths: dict[int, int] = {}  # node id -> its document's length in terms
        self._length_total = 0
        self._source: weakref.ref[NamespaceState] | None = None
        self._node_counts = _VersionCounts()
        self._observation_counts = _VersionCounts()
        self._index_seen = 0  # The newest `updated.index` among the versions refreshed from.
        self.as_of: int | None = None  # Set on an index of the past, which never refreshes.

    # -- Keeping up -----------------------------------------------------------------------------

    def refresh(self, ns: NamespaceState) -> tuple[int, ...]:
        """Bring the index up to date with `ns`; return the ids of the nodes re-indexed.

        Only nodes whose record or any of whose observations changed since the last refresh are
        re-indexed; a node deleted since is dropped. Cheap when nothing changed (see the module
        docstring). A different namespace object than last time is indexed from scratch.
        """
        assert self.as_of is None, "an index of the past is never refreshed"
        if self._source is None or self._source() is not ns:
            self._reset(ns)
        reindexed = self._changed_nodes(ns)
        for node_id in reindexed:
            self._remove(node_id)
            node = ns.live_node(node_id)
            if node is not None:
                live = ns.observations_live.get(node_id, {})
                observations = [ns.observations[observation_id][-1] for observation_id in live]
                self._add(node_id, document_tokens(node, observations))
        return reindexed

    def _changed_nodes(self, ns: NamespaceState) -> tuple[int, ...]:
        """The nodes whose record or any of whose observations changed since the last call."""
        changed_nodes = self._node_counts.changed(ns.nodes)
        changed_observations = self._observation_counts.changed(ns.observations)
        if not changed_nodes and not changed_observations:
            return ()
        newest = self._index_seen
        dirty = set()
        for node_id in changed_nodes:
            newest = max(newest, self._check_newer(ns.nodes[node_id][-1].updated.index))
            dirty.add(node_id)
        for observation_id in changed_observations:
            observation = ns.observations[observation_id][-1]
            newest = max(newest, self._check_newer(observation.updated.index))
            dirty.add(observation.node_id)
        self._index_seen = newest
        return tuple(sorted(dirty))

    @classmethod
    def build_as_of(cls, ns: NamespaceState, as_of: int) -> KeywordIndex:
        """An index of the namespace as it was at commit index `as_of` (never refreshed)."""
        if not isinstance(as_of, int) or isinstance(as_of, bool) or as_of < 0:
            raise ValidationError("as_of must be a commit index (an integer >= 0)", "as_of")
        index = cls()
        index.as_of = as_of
        for node_id in ns.nodes:
            node = queries.get_node(ns, node_id, as_of)
            if node is not None:
                observations = queries.observations_of(ns, node_id, as_of)
                index._add(node_id, document_tokens(node, observations))
        return index

    def _check_newer(self, index: int) -> int:
        assert index > self._index_seen, (index, self._index_seen)
        return index

    def _reset(self, ns: NamespaceState) -> None:
        self._postings.clear()
        self._vocabulary.clear()
        self._terms.clear()
        self._lengths.clear()
        self._length_total = 0
        self._source = weakref.ref(ns)
        self._node_counts = _VersionCounts()
        self._observation_counts = _VersionCounts()
        self._index_seen = 0

    def _add(self, node_id: int, document: list[str]) -> None:
        assert node_id not in self._terms, node_id
        frequencies = Counter(document)
        postings, vocabulary = self._postings, self._vocabulary
        terms = []
        for term, frequency in frequencies.items():
            found = postings.get(term)
            if found is None:
                postings[term] = {node_id: frequency}
                vocabulary[term] = term
                terms.append(term)
            else:
                found[node_id] = frequency
                terms.append(vocabulary[term])
        self._terms[node_id] = tuple(terms)
        self._lengths[node_id] = len(document)
        self._length_total += len(document)

    def _remove(self, node_id: int) -> None:
        terms = self._terms.pop(node_id, None)
        if terms is None:
            return
        for term in terms:
            postings = self._postings[term]
            del postings[node_id]
            if not postings:
                del self._postings[term]
                del self._vocabulary[term]
        self._length_total -= self._lengths.pop(node_id)
        assert self._length_total >= 0

    # -- Reads ----------------------------------------------------------------------------------

    def search(self, query: str, limit: int) -> list[tuple[int, float]]:
        """Node ids with their BM25 score for `query`, best first (ties by node id), at most
        `limit`, only those scoring above 0."""
        weighted = self._weighted_postings(_query_terms(query))
        _check_limit(limit)
        scores: dict[int, float] = {}
        self._add_scores(scores, weighted, None)
        best = heapq.nsmallest(limit, scores.items(), key=_best_first)
        return [(node_id, score) for node_id, score in best if score > 0.0]

    def score(self, query: str, node_ids: Iterable[int]) -> dict[int, float]:
        """BM25 scores of the given nodes for `query` (0.0 for unknown ones), in the order given."""
        weighted = self._weighted_postings(_query_terms(query))
        scores: dict[int, float] = {}
        for node_id in node_ids:
            if not isinstance(node_id, int) or isinstance(node_id, bool):
                raise ValidationError("node_ids must be integers", "node_ids")
            scores[node_id] = 0.0
        self._add_scores(scores, weighted, scores.keys())
        return scores

    def _weighted_postings(self, terms: Iterable[str]) -> list[tuple[float, dict[int, int]]]:
        """(IDF times (k1 + 1), postings) of each query term found, in query order."""
        count = len(self._lengths)
        weighted = []
        for term in terms:
            postings = self._postings.get(term)
            if postings is not None:
                holding = len(postings)
                idf = math.log(1.0 + (count - holding + 0.5) / (holding + 0.5))
                weighted.append((idf * (BM25_K1 + 1.0), postings))
        return weighted

    def _add_scores(
        self,
        scores: dict[int, float],
        weighted: list[tuple[float, dict[int, int]]],
        among: Collection[int] | None,
    ) -> None:
        """Add each term's contribution to the scores of the nodes holding it (of `among` only,
        if given), a term at a time in query order.

        The one place a score is computed, so `search` and `score` agree to the last bit. The
        length norm k1 * (1 - b + b * length / average) is written as base + slope * length.
        """
        if not weighted:
            return
        # A term has postings only if some document holds it, so the total length is > 0.
        average = self._length_total / len(self._lengths)
        base = BM25_K1 * (1.0 - BM25_B)
        slope = BM25_K1 * BM25_B / average
        lengths = self._lengths
        for weight, postings in weighted:
            if among is None:
                holding: Iterable[tuple[int, int]] = postings.items()
            else:
                holding = [(node_id, postings[node_id]) for node_id in among if node_id in postings]
            for node_id, frequency in holding:
                gain = weight * frequency / (frequency + base + slope * lengths[node_id])
                scores[node_id] = scores.get(node_id, 0.0) + gain

    @property
    def document_count(self) -> int:
        return len(self._lengths)

    def contents(self) -> tuple[dict[str, dict[int, int]], dict[int, int]]:
        """Postings and document lengths, sorted: equal for equal indexes, however built."""
        postings = {
            term: dict(sorted(self._postings[term].items())) for term in sorted(self._postings)
        }
        return postings, dict(sorted(self._lengths.items()))

    def invariants(self) -> None:
        """Assert the class invariants (a full pass; for tests)."""
        assert self._lengths.keys() == self._terms.keys()
        assert self._vocabulary.keys() == self._postings.keys()
        assert self._length_total == sum(self._lengths.values())
        entries = 0
        for node_id, terms in self._terms.items():
            assert len(set(terms)) == len(terms), node_id
            assert all(self._vocabulary[term] is term for term in terms), node_id
            frequencies = [self._postings[term][node_id] for term in terms]
            assert all(frequency >= 1 for frequency in frequencies), node_id
            assert sum(frequencies) == self._lengths[node_id], node_id
            entries += len(terms)
        assert all(self._postings.values())
        assert entries == sum(len(postings) for postings in self._postings.values())


def _best_first(item: tuple[int, float]) -> tuple[float, int]:
    return -item[1], item[0]


def _query_terms(query: object) -> list[str]:
    """The distinct terms of a query, in the order they first appear."""
    text = validate.text_field(query, "query", constants.text_bytes_max, empty_ok=True)
    return list(dict.fromkeys(tokens(text)))


def _check_limit(limit: object) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise ValidationError("limit must be an integer", "limit")
    if limit < 1:
        raise ValidationError("limit must be at least 1", "limit")
    if limit > constants.top_k_max:
        raise LimitError(f"limit must be at most {constants.top_k_max}", "limit")
