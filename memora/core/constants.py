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
# Larger components would overflow float32 in squared distances (4096 * (2e12)**2 < 3.4e38).
vector_component_abs_max: Final = 1e12

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
# Versions written but not yet summed into the state hash (digested when a hash is asked for, or
# once this many wait): bounds the list, not the work, which is the same either way.
undigested_versions_max: Final = 4_096
int_property_min: Final = -(2**63)
int_property_max: Final = 2**63 - 1

# Client sessions (exactly-once commands): the clients remembered, at most.
clients_max: Final = 100_000
client_id_bytes_max: Final = 256

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
# A full active segment is sealed. Restoring a snapshot rebuilds the active segment's graph in log
# order (DESIGN.md), about 36 s per 100,000 vectors of dimension 128 here; this bounds that time.
vector_segment_vectors_max: Final = 131_072
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
assert dimension_max * (2 * vector_component_abs_max) ** 2 < 3.4e38
assert metric_default in metrics
assert 0 < vector_segment_brute_force_max < vector_segment_vectors_max
assert vector_segment_capacity_initial <= vector_segment_vectors_max
assert hnsw_ef_search_default <= hnsw_ef_search_max
assert top_k_max <= hnsw_ef_search_max
assert frame_body_bytes_max < 2**32
assert entry_bytes_max < frame_body_bytes_max
assert snapshots_kept >= 2

# ---------------------------------------------------------------------------------------------
# Raft (memora/core/raft). Time is counted in ticks; the driver ticks every `raft_tick_ms`.
raft_tick_ms: Final = 10
# The election timeout is drawn afresh in [min, max] from the seeded PRNG: 150-300 ms of ticks.
election_timeout_ticks_min: Final = 15
election_timeout_ticks_max: Final = 30
heartbeat_interval_ticks: Final = 3
# How many ticks a lease read gives up against clock drift between leader and followers.
lease_drift_ticks: Final = 3
# Node ids are positive and fit a signed 64-bit integer; 0 is never an id.
raft_node_id_min: Final = 1
raft_node_id_max: Final = 2**63 - 1
raft_members_max: Final = 64
# Every term and index fits an unsigned 64-bit integer.
raft_term_max: Final = 2**64 - 1
raft_index_max: Final = 2**64 - 1
# Bytes counted for an entry besides its data, for batching and flow control.
raft_entry_overhead_bytes: Final = 32
# One AppendRequest carries entries up to this many bytes (at least one entry, whatever its size).
raft_append_bytes_max: Final = 1024 * 1024
raft_append_entries_max: Final = 4096
# Flow control of a follower in the replicate state: messages and bytes sent but not acknowledged.
raft_inflight_messages_max: Final = 256
raft_inflight_bytes_max: Final = 64 * 1024 * 1024
# A leader refuses new proposals while this many bytes of its own entries are uncommitted.
raft_uncommitted_bytes_max: Final = 256 * 1024 * 1024
# One Ready hands over committed entries up to this many bytes (at least one entry).
raft_ready_committed_bytes_max: Final = 16 * 1024 * 1024
# InstallSnapshot is sent in chunks of this size, one at a time, and assembled by the follower.
raft_snapshot_chunk_bytes: Final = 1024 * 1024
raft_snapshot_bytes_max: Final = 16 * 1024 * 1024 * 1024
# A chunk with no acknowledgment after this many heartbeat responses is sent again.
raft_snapshot_retry_heartbeats: Final = 2
# Reads waiting for confirmation of leadership, on one leader.
raft_pending_reads_max: Final = 65_536
# Nesting of CBOR arrays and tags in one Raft message (a chunk holds a meta holds a configuration).
raft_message_depth_max: Final = 16
# Rejection sampling in the PRNG: the odds of needing more rounds are below 2**-128.
prng_rejection_rounds_max: Final = 128

assert raft_tick_ms > 0
assert 0 < heartbeat_interval_ticks < election_timeout_ticks_min <= election_timeout_ticks_max
assert 0 <= lease_drift_ticks < election_timeout_ticks_min
assert election_timeout_ticks_min * raft_tick_ms == 150
assert election_timeout_ticks_max * raft_tick_ms == 300
assert 0 < raft_node_id_min <= raft_node_id_max
assert raft_members_max >= 1
assert 0 < raft_append_bytes_max <= raft_inflight_bytes_max
assert raft_append_entries_max > 0
assert raft_inflight_messages_max > 0
assert raft_append_bytes_max <= frame_body_bytes_max
assert raft_uncommitted_bytes_max >= entry_bytes_max
assert raft_ready_committed_bytes_max > 0
assert 0 < raft_snapshot_chunk_bytes <= frame_body_bytes_max - 1024
assert raft_snapshot_chunk_bytes <= raft_snapshot_bytes_max
assert raft_snapshot_retry_heartbeats >= 1
assert raft_pending_reads_max > 0

# ---------------------------------------------------------------------------------------------
# The peer transport between cluster nodes (memora/net/peer_wire.py, memora/net/peer_transport.py).
peer_protocol_version: Final = 1
# The shared cluster secret: shorter ones are refused (HMAC-SHA256 keys of 128 bits at least).
peer_secret_bytes_min: Final = 16
peer_secret_bytes_max: Final = 4096
# Each side of a handshake contributes a fresh nonce of this size.
peer_nonce_bytes: Final = 32
# A node's incarnation: random bytes made with its data directory, sent in every handshake.
peer_incarnation_bytes: Final = 16
# Every frame after the handshake ends with an HMAC-SHA256 tag truncated to this size.
peer_mac_bytes: Final = 16
# A handshake message (a small CBOR map) never exceeds this; a longer length prefix is refused.
peer_handshake_body_bytes_max: Final = 1024
peer_cluster_id_bytes_max: Final = 128
# "host:port", with a DNS name of at most 253 bytes or a bracketed IPv6 literal.
peer_address_bytes_max: Final = 300
# One read from a peer's socket takes at most this many bytes.
peer_receive_bytes_max: Final = 256 * 1024
# Inbound connections still in their handshake (unauthenticated), at most; more are closed at once.
peer_handshakes_pending_max: Final = 64

assert peer_protocol_version >= 1
assert 16 <= peer_secret_bytes_min <= peer_secret_bytes_max
assert peer_nonce_bytes >= 16
assert peer_incarnation_bytes >= 16
assert 8 <= peer_mac_bytes <= 32
assert peer_cluster_id_bytes_max + peer_address_bytes_max + 3 * peer_nonce_bytes < (
    peer_handshake_body_bytes_max
)
assert frame_body_bytes_max + peer_mac_bytes < 2**32
assert peer_receive_bytes_max > 0
assert peer_handshakes_pending_max > 0
