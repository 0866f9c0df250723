"""Memora: a replicated hybrid graph + vector database that serves as long-term memory for LLMs.

`memora.Memora` is the embedded, durable store. The records and commands it speaks are re-exported
here so that `from memora import Memora, InsertNode` is all a user needs.
"""

from memora.core.errors import (
    CodecError,
    ConflictError,
    DimensionError,
    LimitError,
    MemoraError,
    NotFoundError,
    ValidationError,
)
from memora.core.types import (
    AddObservation,
    Batch,
    CreateNamespace,
    DeleteEdge,
    DeleteNode,
    DeleteObservation,
    Edge,
    HybridHit,
    InsertEdge,
    InsertNode,
    Namespace,
    Node,
    Observation,
    Provenance,
    ReadOnlyError,
    RelatedNode,
    SetVector,
    SimilarHit,
    UpdateEdge,
    UpdateNode,
)


def __getattr__(name: str) -> object:
    # Imported lazily so that `import memora.core...` never pulls in the I/O layers.
    if name == "Memora":
        from memora.service.embedded import Memora

        return Memora
    if name in ("Client", "AsyncClient"):
        import memora.client

        client: object = getattr(memora.client, name)
        return client
    raise AttributeError(f"module 'memora' has no attribute {name!r}")


__all__ = [
    "AddObservation",
    "AsyncClient",
    "Batch",
    "Client",
    "CodecError",
    "ConflictError",
    "CreateNamespace",
    "DeleteEdge",
    "DeleteNode",
    "DeleteObservation",
    "DimensionError",
    "Edge",
    "HybridHit",
    "InsertEdge",
    "InsertNode",
    "LimitError",
    "Memora",
    "MemoraError",
    "Namespace",
    "Node",
    "NotFoundError",
    "Observation",
    "Provenance",
    "ReadOnlyError",
    "RelatedNode",
    "SetVector",
    "SimilarHit",
    "UpdateEdge",
    "UpdateNode",
    "ValidationError",
]
