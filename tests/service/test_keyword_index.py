"""Tests of the BM25 keyword index (`memora.service.keyword_index`).

Scores are checked against a straightforward BM25 computed from scratch out of the namespace's
records; an incrementally refreshed index against one built fresh, over random sequences of real
writes applied by a real `StateMachine` (hypothesis); then ranking, history and typed errors.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from memora.core import constants, queries, snapshot
from memora.core.errors import LimitError, MemoraError, ValidationError
from memora.core.namespace import NamespaceState
from memora.core.state import StateMachine
from memora.core.types import (
    AddObservation,
    Applied,
    Batch,
    Command,
    CreateNamespace,
    DeleteNode,
    DeleteObservation,
    Entry,
    InsertNode,
    Rejected,
    UpdateNode,
)
from memora.service.keyword_index import (
    BM25_B,
    BM25_K1,
    KeywordIndex,
    _positions_changed,
    tokens,
)

NAMESPACE = "main"


class Store:
    """A state machine and its log, for tests that write and read as they go."""

    def __init__(self) -> None:
        self.machine = StateMachine()
        self.apply(CreateNamespace(4, "cosine"))

    def apply(self, command: Command) -> Applied | Rejected:
        index = self.machine.applied_index + 1
        entry = Entry(index, 1, 1_000 + index, "agent", NAMESPACE, None, command)
        return self.machine.apply(entry)

    def ok(self, command: Command) -> Any:
        result = self.apply(command)
        assert isinstance(result, Applied), result
        return result.value

    @property
    def ns(self) -> NamespaceState:
        return self.machine.namespace(NAMESPACE)

    @property
    def index(self) -> int:
        return self.machine.applied_index


# -- A reference BM25, from scratch ---------------------------------------------------------------


def reference_documents(ns: NamespaceState, as_of: int | None = None) -> dict[int, list[str]]:
    """Every live node's bag of words, read through `memora.core.queries`."""
    documents = {}
    for node_id in sorted(ns.nodes):
        node = queries.get_node(ns, node_id, as_of)
        if node is None:
            continue
        texts = [node.name or "", node.label, node.text or ""]
        texts += [o.text for o in queries.observations_of(ns, node_id, as_of)]
        documents[node_id] = [term for text in texts for term in tokens(text)]
    return documents


def reference_scores(documents: dict[int, list[str]], query: str) -> dict[int, float]:
    """Okapi BM25 of every document, written the long way round."""
    count = len(documents)
    average = sum(len(document) for document in documents.values()) / max(count, 1)
    terms = list(dict.fromkeys(tokens(query)))
    scores = {}
    for node_id, document in documents.items():
        frequencies = Counter(document)
        score = 0.0
        for term in terms:
            frequency = frequencies[term]
            if frequency == 0:
                continue
            holding = sum(1 for other in documents.values() if term in other)
            idf = math.log(1 + (count - holding + 0.5) / (holding + 0.5))
            norm = BM25_K1 * (1 - BM25_B + BM25_B * len(document) / average)
            score += idf * frequency * (BM25_K1 + 1) / (frequency + norm)
        scores[node_id] = score
    return scores


def check_against_reference(index: KeywordIndex, ns: NamespaceState, query: str) -> None:
    documents = reference_documents(ns)
    expected = reference_scores(documents, query)
    probe = [*documents, 999_999]  # An unknown id scores 0.0.
    actual = index.score(query, probe)
    assert list(actual) == probe
    assert actual[999_999] == 0.0
    for node_id, score in expected.items():
        assert math.isclose(actual[node_id], score, rel_tol=0.0, abs_tol=1e-9), (node_id, query)
    found = index.search(query, constants.top_k_max)
    ranked = sorted(
        ((node_id, score) for node_id, score in actual.items() if score > 0.0),
        key=lambda item: (-item[1], item[0]),
    )
    assert found == ranked
    assert index.document_count == len(documents)


def fresh(ns: NamespaceState) -> KeywordIndex:
    index = KeywordIndex()
    index.refresh(ns)
    return index


# -- The tokeniser --------------------------------------------------------------------------------


def test_tokens_fold_case_split_on_non_letters_and_drop_stop_words() -> None:
    assert tokens("The Quick, brown FOX!") == ["quick", "brown", "fox"]
    assert tokens("user_preference:project-alpha/v2") == [
        "user",
        "preference",
        "project",
        "alpha",
        "v2",
    ]
    assert tokens("it's the end, don't panic") == ["end", "don", "panic"]
    assert tokens("the and of a to") == []
    assert tokens("") == []


def test_tokens_are_unicode_aware() -> None:
    assert tokens("Straße café ÉTÉ") == ["strasse", "café", "été"]
    # NFKC: a decomposed accent, a ligature and full-width letters read as their plain forms.
    assert tokens("cafe\u0301 \ufb01ne \uff21\uff22\uff23") == ["café", "fine", "abc"]
    assert tokens("東京 タワー") == ["東京", "タワー"]


def test_tokens_strip_a_plural_s_on_longer_words_only() -> None:
    assert tokens("cats dogs memories") == ["cat", "dog", "memorie"]
    assert tokens("bus gas yes") == ["bus", "gas", "yes"]
    assert tokens("class status analysis") == ["class", "status", "analysis"]


# -- BM25 against the reference -------------------------------------------------------------------


def small_corpus() -> Store:
    store = Store()
    store.ok(InsertNode("Person", name="alice", text="Alice likes green tea and long walks"))
    store.ok(InsertNode("Person", name="bob", text="Bob prefers coffee, black, no sugar"))
    store.ok(InsertNode("Project", name="memora", text="A graph and vector database for memory"))
    store.ok(InsertNode("Decision", text="Use tea at the offsite, not coffee"))
    store.ok(InsertNode("UserPreference"))
    store.ok(AddObservation(1, "Alice drinks tea every morning"))
    store.ok(AddObservation(1, "Alice walks to work"))
    store.ok(AddObservation(2, "Bob once tried green tea"))
    return store


QUERIES = (
    "tea",
    "green tea",
    "coffee sugar",
    "alice walks",
    "memory database graph",
    "Person",
    "userpreference",
    "tea tea TEA",
    "nothing matches",
)


def test_scores_equal_the_reference_on_a_small_corpus() -> None:
    store = small_corpus()
    index = fresh(store.ns)
    for query in QUERIES:
        check_against_reference(index, store.ns, query)


def test_scores_equal_the_reference_after_every_kind_of_change() -> None:
    store = small_corpus()
    index = fresh(store.ns)
    changes: list[Command] = [
        UpdateNode(2, text="Bob switched to green tea"),
        UpdateNode(1, name="alicia"),  # A rename.
        UpdateNode(3, label="Database"),
        UpdateNode(4, clear=("text",)),
        AddObservation(3, "Memora keeps memories of tea and coffee"),
        DeleteObservation(1),
        DeleteNode(2),  # Its observation goes with it.
        InsertNode("Person", id=2, name="bob", text="Bob is back, with coffee"),  # Re-inserted.
        Batch([AddObservation(5, "prefers tea"), AddObservation(5, "prefers dark mode")]),
    ]
    for command in changes:
        store.ok(command)
        index.refresh(store.ns)
        index.invariants()
        for query in QUERIES:
            check_against_reference(index, store.ns, query)
        assert index.contents() == fresh(store.ns).contents()


def test_an_empty_namespace_has_no_hits() -> None:
    store = Store()
    index = fresh(store.ns)
    assert index.search("anything", 10) == []
    assert index.score("anything", [1]) == {1: 0.0}
    assert index.document_count == 0


# -- Incremental refresh --------------------------------------------------------------------------


def test_refresh_reindexes_exactly_the_nodes_that_changed() -> None:
    store = small_corpus()
    index = KeywordIndex()
    assert index.refresh(store.ns) == (1, 2, 3, 4, 5)
    assert index.refresh(store.ns) == ()
    store.ok(UpdateNode(3, text="now about espresso"))
    assert index.refresh(store.ns) == (3,)
    assert [node_id for node_id, _ in index.search("espresso", 10)] == [3]
    store.ok(AddObservation(4, "espresso was chosen"))
    store.ok(UpdateNode(1, properties={"age": 30}))  # No word changed; still re-indexed.
    assert index.refresh(store.ns) == (1, 4)
    assert [node_id for node_id, _ in index.search("espresso", 10)] == [3, 4]
    store.ok(DeleteObservation(3))  # Bob's.
    assert index.refresh(store.ns) == (2,)
    store.ok(DeleteNode(3))
    assert index.refresh(store.ns) == (3,)
    assert [node_id for node_id, _ in index.search("espresso", 10)] == [4]
    store.ok(InsertNode("Note", text="espresso again"))
    assert index.refresh(store.ns) == (6,)
    assert index.contents() == fresh(store.ns).contents()


def test_untouched_nodes_keep_their_postings() -> None:
    store = small_corpus()
    index = fresh(store.ns)
    postings_before, lengths_before = index.contents()
    store.ok(UpdateNode(5, text="zeppelin"))
    assert index.refresh(store.ns) == (5,)
    postings_after, lengths_after = index.contents()
    assert postings_after.pop("zeppelin") == {5: 1}
    assert {node: n for node, n in lengths_after.items() if node != 5} == {
        node: n for node, n in lengths_before.items() if node != 5
    }
    assert postings_after == postings_before


def test_a_rejected_command_changes_nothing_to_refresh() -> None:
    store = small_corpus()
    index = fresh(store.ns)
    # The first command applies, the second fails, and the whole batch is rolled back.
    result = store.apply(Batch([AddObservation(1, "rolled back"), DeleteObservation(999)]))
    assert isinstance(result, Rejected)
    assert index.refresh(store.ns) == ()
    assert index.search("rolled", 10) == []


def test_a_restored_namespace_is_indexed_from_scratch() -> None:
    store = small_corpus()
    index = fresh(store.ns)
    restored = snapshot.restore(snapshot.take(store.machine)).namespace(NAMESPACE)
    assert restored is not store.ns
    assert index.refresh(restored) == (1, 2, 3, 4, 5)
    assert index.contents() == fresh(store.ns).contents()
    other = Store()
    other.ok(InsertNode("Thing", text="unrelated words"))
    assert index.refresh(other.ns) == (1,)
    assert index.contents() == fresh(other.ns).contents()


@given(
    st.integers(0, 1_000),
    st.lists(st.tuples(st.integers(0, 999), st.integers(1, 3)), max_size=20),
)
def test_positions_changed_finds_every_difference(
    size: int, changes: list[tuple[int, int]]
) -> None:
    before = [1 + position % 3 for position in range(size)]
    after = list(before)
    for position, value in changes:
        if position < size:
            after[position] = value
    after += [1, 2, 3]  # New records at the end are not the function's business.
    expected = [p for p in range(size) if before[p] != after[p]]
    assert _positions_changed(before, after) == expected


def test_refresh_finds_changes_anywhere_in_a_large_namespace() -> None:
    store = Store()
    store.ok(Batch([InsertNode("Fact", text=f"fact {n}") for n in range(1, 301)]))
    store.ok(Batch([AddObservation(n, f"note {n}") for n in range(1, 301)]))
    index = fresh(store.ns)
    changed = (1, 2, 33, 64, 65, 150, 299, 300)
    store.ok(Batch([UpdateNode(node_id, text="changed") for node_id in changed]))
    assert index.refresh(store.ns) == changed
    notes = (1, 31, 32, 200, 300)  # Observation n belongs to node n.
    store.ok(Batch([DeleteObservation(observation_id) for observation_id in notes]))
    assert index.refresh(store.ns) == notes
    assert index.contents() == fresh(store.ns).contents()


# -- Property: incremental equals fresh, over random writes ---------------------------------------

WORDS = ("tea", "teas", "coffee", "The", "of", "graph", "Graphs", "été", "memory", "alpha_beta")
LABELS = ("Person", "Fact", "UserPreference")

words = st.lists(st.sampled_from(WORDS), max_size=5).map(" ".join)
some_words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=5).map(" ".join)
inserts = st.tuples(st.just("insert"), st.sampled_from(LABELS), words, st.booleans())
operations = st.one_of(
    inserts,
    st.tuples(st.just("text"), st.integers(0, 50), words),
    st.tuples(st.just("rename"), st.integers(0, 50), st.integers(0, 5)),
    st.tuples(st.just("relabel"), st.integers(0, 50), st.sampled_from(LABELS)),
    st.tuples(st.just("clear"), st.integers(0, 50), st.sampled_from(("name", "text"))),
    st.tuples(st.just("delete"), st.integers(0, 50)),
    st.tuples(st.just("reinsert"), st.integers(0, 50), words),
    st.tuples(st.just("observe"), st.integers(0, 50), some_words),
    st.tuples(st.just("forget"), st.integers(0, 50)),
    st.tuples(st.just("rejected"), st.integers(0, 50), some_words),
    st.tuples(st.just("refresh")),
)


def command_for(store: Store, operation: tuple[Any, ...]) -> Command | None:
    """The command an operation stands for, against whatever records exist, or None."""
    ns = store.ns
    live = sorted(node_id for ids in ns.labels.values() for node_id in ids)
    dead = sorted(node_id for node_id in ns.nodes if node_id not in live)
    notes = sorted(oid for ids in ns.observations_live.values() for oid in ids)
    kind, *arguments = operation
    if kind == "insert":
        label, text, named = arguments
        name = f"n{ns.next_node_id}" if named else None
        return InsertNode(label, name=name, text=text)
    if kind == "reinsert" and dead:
        return InsertNode("Fact", id=dead[arguments[0] % len(dead)], text=arguments[1])
    if kind == "forget" and notes:
        return DeleteObservation(notes[arguments[0] % len(notes)])
    if not live or kind in ("reinsert", "forget"):
        return None
    node_id = live[arguments[0] % len(live)]
    simple: dict[str, Command] = {
        "text": UpdateNode(node_id, text=arguments[-1]),
        "rename": UpdateNode(node_id, name=f"renamed {node_id} {arguments[-1]}"),
        "relabel": UpdateNode(node_id, label=arguments[-1]),
        "clear": UpdateNode(node_id, clear=(arguments[-1],)),
        "delete": DeleteNode(node_id),
        "observe": AddObservation(node_id, arguments[-1]),
        "rejected": Batch([AddObservation(node_id, arguments[-1]), DeleteNode(10**9)]),
    }
    return simple[kind]


@settings(max_examples=200, deadline=None)
@given(st.lists(inserts, min_size=1, max_size=6), st.lists(operations, max_size=40))
def test_incremental_refresh_equals_a_fresh_build(
    population: list[tuple[Any, ...]], steps: list[tuple[Any, ...]]
) -> None:
    store = Store()
    index = KeywordIndex()
    seen: dict[int, tuple[Any, Any]] = {}  # applied index -> contents then
    for step in [*population, *steps, ("refresh",)]:
        if step[0] == "refresh":
            index.refresh(store.ns)
            index.invariants()
            assert index.contents() == fresh(store.ns).contents()
            seen[store.index] = index.contents()
            continue
        command = command_for(store, step)
        if command is not None:
            result = store.apply(command)
            assert isinstance(result, Applied) == (step[0] != "rejected"), result
    for query in ("tea", "graph memory", "été alpha", "the of"):
        check_against_reference(index, store.ns, query)
    for as_of, contents in seen.items():
        assert KeywordIndex.build_as_of(store.ns, as_of).contents() == contents


# -- Ranking --------------------------------------------------------------------------------------


def test_rare_terms_outrank_common_ones() -> None:
    store = Store()
    for number in range(10):
        store.ok(InsertNode("Fact", text=f"apple pie number{number}"))
    store.ok(InsertNode("Fact", text="zebra pie number10"))
    index = fresh(store.ns)
    hits = index.search("apple zebra", 3)
    assert hits[0][0] == 11
    assert hits[0][1] > hits[1][1] > 0.0
    assert index.search("zebra", 5) == hits[:1]


def test_stop_words_alone_give_no_hits() -> None:
    store = small_corpus()
    index = fresh(store.ns)
    assert index.search("the and of to a", 10) == []
    assert index.search("", 10) == []
    assert index.search("!!! ---", 10) == []
    assert set(index.score("the of", [1, 2, 3]).values()) == {0.0}


def test_ties_are_ordered_by_node_id() -> None:
    store = Store()
    for node_id in (30, 10, 20, 40):  # Inserted out of id order.
        store.ok(InsertNode("Fact", id=node_id, text="identical words here"))
    store.ok(InsertNode("Fact", id=5, text="something else entirely"))
    index = fresh(store.ns)
    hits = index.search("identical", 10)
    assert [node_id for node_id, _ in hits] == [10, 20, 30, 40]
    assert len({score for _, score in hits}) == 1
    assert [node_id for node_id, _ in index.search("identical", 2)] == [10, 20]


def test_search_and_score_agree_to_the_last_bit() -> None:
    store = small_corpus()
    index = fresh(store.ns)
    for query in QUERIES:
        hits = index.search(query, 100)
        assert index.score(query, [node_id for node_id, _ in hits]) == dict(hits)


# -- History --------------------------------------------------------------------------------------


def test_build_as_of_matches_the_index_of_that_time() -> None:
    store = Store()
    index = KeywordIndex()
    contents = {store.index: fresh(store.ns).contents()}
    commands: list[Command] = [
        InsertNode("Person", name="alice", text="tea"),
        InsertNode("Person", name="bob", text="coffee"),
        AddObservation(1, "green tea daily"),
        UpdateNode(2, name="robert", text="coffee and tea"),
        DeleteObservation(1),
        DeleteNode(1),
        InsertNode("Person", id=1, name="alice", text="back again"),
        AddObservation(2, "decaf now"),
    ]
    for command in commands:
        store.ok(command)
        index.refresh(store.ns)
        contents[store.index] = index.contents()
    for as_of, expected in contents.items():
        past = KeywordIndex.build_as_of(store.ns, as_of)
        assert past.as_of == as_of
        assert past.contents() == expected
        documents = reference_documents(store.ns, as_of)
        for query in ("tea", "coffee decaf", "alice robert"):
            reference = reference_scores(documents, query)
            scores = past.score(query, documents)
            assert all(math.isclose(scores[n], s, abs_tol=1e-9) for n, s in reference.items())
    assert KeywordIndex.build_as_of(store.ns, 0).document_count == 0


def test_an_index_of_the_past_is_never_refreshed() -> None:
    store = small_corpus()
    past = KeywordIndex.build_as_of(store.ns, 2)
    with pytest.raises(AssertionError):
        past.refresh(store.ns)


# -- Typed errors ---------------------------------------------------------------------------------

BAD_SEARCHES: list[tuple[Any, Any, type[MemoraError], str]] = [
    (123, 10, ValidationError, "query"),
    (None, 10, ValidationError, "query"),
    ("x" * (constants.text_bytes_max + 1), 10, LimitError, "query"),
    ("é" * (constants.text_bytes_max // 2 + 1), 10, LimitError, "query"),  # Bytes, not letters.
    ("tea\x00", 10, ValidationError, "query"),
    ("\ud800", 10, ValidationError, "query"),
    ("tea", 0, ValidationError, "limit"),
    ("tea", -1, ValidationError, "limit"),
    ("tea", True, ValidationError, "limit"),
    ("tea", "10", ValidationError, "limit"),
    ("tea", 2.0, ValidationError, "limit"),
    ("tea", constants.top_k_max + 1, LimitError, "limit"),
]


@pytest.mark.parametrize(("query", "limit", "error", "field"), BAD_SEARCHES)
def test_bad_searches_raise_typed_errors(
    query: Any, limit: Any, error: type[MemoraError], field: str
) -> None:
    index = fresh(small_corpus().ns)
    with pytest.raises(error) as raised:
        index.search(query, limit)
    assert type(raised.value) is error
    assert raised.value.field == field


def test_limits_at_their_bounds_are_accepted() -> None:
    index = fresh(small_corpus().ns)
    assert len(index.search("tea", constants.top_k_max)) == 3
    assert len(index.search("tea", 1)) == 1
    assert index.search("tea " + "x" * (constants.text_bytes_max - 4), 1) != []


@pytest.mark.parametrize("node_ids", [["1"], [True], [1, None], [1.0]])
def test_bad_node_ids_raise_typed_errors(node_ids: list[Any]) -> None:
    index = fresh(small_corpus().ns)
    with pytest.raises(ValidationError) as raised:
        index.score("tea", node_ids)
    assert raised.value.field == "node_ids"
    with pytest.raises(ValidationError):
        index.score(b"tea", [1])  # type: ignore[arg-type]


@pytest.mark.parametrize("as_of", [-1, "3", True, None, 1.5])
def test_bad_as_of_raises_a_typed_error(as_of: Any) -> None:
    store = small_corpus()
    with pytest.raises(ValidationError) as raised:
        KeywordIndex.build_as_of(store.ns, as_of)
    assert raised.value.field == "as_of"
