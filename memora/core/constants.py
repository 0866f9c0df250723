"""Every limit Memora enforces, in one place.

Names end with their unit and then their qualifier (`text_bytes_max`, `dimension_max`), in the style
of TigerBeetle's constants. Other modules import these; none defines a limit of its own. The
assertions at the bottom check the limits against each other at import time.
"""

from typing import Final

# Namespaces (tenants).
namespace_name_bytes_max: Final = 64
namespace_default: Final = "default"
namespaces_max: Final = 1024

# Vectors.
dimension_default: Final = 128
dimension_min: Final = 1
dimension_max: Final = 4096
metrics: Final = ("cosine", "l2")
metric_default: Final = "cosine"

# Records.
label_bytes_max: Final = 128
name_bytes_max: Final = 512
edge_kind_bytes_max: Final = 128
edge_kinds_builtin: Final = ("owns", "links", "related", "child_of", "similar_to")
text_bytes_max: Final = 64 * 1024
source_bytes_max: Final = 1024
principal_bytes_max: Final = 256
session_bytes_max: Final = 256
properties_count_max: Final = 256
property_key_bytes_max: Final = 256
properties_bytes_max: Final = 64 * 1024
property_depth_max: Final = 8
record_id_min: Final = 1
record_id_max: Final = 2**63 - 1
int_property_min: Final = -(2**63)
int_property_max: Final = 2**63 - 1

# Commands and entries.
batch_commands_max: Final = 10_000
entry_bytes_max: Final = 64 * 1024 * 1024

# Queries.
top_k_max: Final = 1_000
depth_max: Final = 8
related_nodes_max: Final = 100_000
hybrid_expand_nodes_max: Final = 10_000
list_limit_max: Final = 1_000

# Segmented HNSW (see DESIGN.md, "The state machine").
hnsw_m: Final = 16
hnsw_ef_construction: Final = 200
hnsw_ef_search_default: Final = 64
hnsw_ef_search_max: Final = 4096
vector_segment_brute_force_max: Final = 1_024
vector_segment_vectors_max: Final = 1_048_576
vector_segment_capacity_initial: Final = 4_096

# Log records on disk: [length u32][crc32 u32][cbor].
frame_header_bytes: Final = 8
frame_body_bytes_max: Final = entry_bytes_max + 1024
log_segment_bytes_max: Final = 64 * 1024 * 1024
# How far past a bad frame recovery looks for a valid one before calling the bad frame a torn tail.
log_recovery_scan_window_bytes: Final = 4 * 1024 * 1024

# Snapshots on disk: the newest ones kept, so that a damaged newest one has a fallback.
snapshots_kept: Final = 2

assert len(namespace_default.encode()) <= namespace_name_bytes_max
assert dimension_min <= dimension_default <= dimension_max
assert metric_default in metrics
assert 0 < vector_segment_brute_force_max < vector_segment_vectors_max
assert vector_segment_capacity_initial <= vector_segment_vectors_max
assert hnsw_ef_search_default <= hnsw_ef_search_max
assert top_k_max <= hnsw_ef_search_max
assert frame_body_bytes_max < 2**32
assert entry_bytes_max < frame_body_bytes_max
assert snapshots_kept >= 2
