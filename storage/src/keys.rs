//! The key layout of the shared database.
//!
//! All raft groups of a node share one key space. Every key is fixed-width big-endian so that
//! byte order is numeric order:
//!
//! ```text
//! group key = [group: u16 BE][space: u8][rest]
//!   LOG  (0x01): [index: u64 BE]            one raft log entry
//!   RAFT (0x02): [tag: u8]                  vote, committed, purged, applied, ... (see RaftTag)
//!   DATA (0x03): [application key bytes]    the group's replicated state machine
//! node key  = [0xFFFF][0x00][name bytes]    node-level records such as the cluster id
//! ```

/// A raft group: 0 is the meta group, `1..=P` are the partition groups.
pub type GroupId = u16;

/// The reserved group id under which node-level keys live.
pub const NODE_GROUP: GroupId = 0xFFFF;

/// Key space of node-level records (only under [`NODE_GROUP`]).
pub const SPACE_NODE: u8 = 0x00;
/// Key space of raft log entries.
pub const SPACE_LOG: u8 = 0x01;
/// Key space of raft bookkeeping records (see [`RaftTag`]).
pub const SPACE_RAFT: u8 = 0x02;
/// Key space of the replicated application state.
pub const SPACE_DATA: u8 = 0x03;

/// Length of a log key: group (2) + space (1) + index (8).
pub const LOG_KEY_LEN: usize = 11;

/// The raft bookkeeping records of a group, stored under [`SPACE_RAFT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RaftTag {
    /// The last vote (synced).
    Vote = 1,
    /// The last committed log id.
    Committed = 2,
    /// The last purged log id.
    Purged = 3,
    /// The state machine's last applied log id.
    Applied = 4,
    /// The state machine's last applied membership.
    Membership = 5,
    /// Set while a snapshot is being installed; holds the snapshot file's path.
    Installing = 6,
    /// The metadata of the current snapshot.
    SnapshotMeta = 7,
}

fn group_space(group: GroupId, space: u8, extra: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + extra);
    k.extend_from_slice(&group.to_be_bytes());
    k.push(space);
    k
}

/// The key of log entry `index` of `group`.
pub fn log_key(group: GroupId, index: u64) -> Vec<u8> {
    let mut k = group_space(group, SPACE_LOG, 8);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// `[start, end)` covering every log key of `group`.
pub fn log_range(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    (group_space(group, SPACE_LOG, 0), group_space(group, SPACE_LOG + 1, 0))
}

/// Decodes a log key into its group and index; `None` if `key` is not a log key.
pub fn decode_log_key(key: &[u8]) -> Option<(GroupId, u64)> {
    if key.len() != LOG_KEY_LEN || key[2] != SPACE_LOG {
        return None;
    }
    let group = u16::from_be_bytes([key[0], key[1]]);
    let mut idx = [0u8; 8];
    idx.copy_from_slice(&key[3..]);
    Some((group, u64::from_be_bytes(idx)))
}

/// The key of a raft bookkeeping record of `group`.
pub fn raft_key(group: GroupId, tag: RaftTag) -> Vec<u8> {
    let mut k = group_space(group, SPACE_RAFT, 1);
    k.push(tag as u8);
    k
}

/// `[start, end)` covering every raft bookkeeping record of `group`.
pub fn raft_range(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    (group_space(group, SPACE_RAFT, 0), group_space(group, SPACE_RAFT + 1, 0))
}

/// The prefix of every application key of `group`.
pub fn data_prefix(group: GroupId) -> Vec<u8> {
    group_space(group, SPACE_DATA, 0)
}

/// The engine key of application key `key` of `group`.
pub fn data_key(group: GroupId, key: &[u8]) -> Vec<u8> {
    let mut k = group_space(group, SPACE_DATA, key.len());
    k.extend_from_slice(key);
    k
}

/// `[start, end)` covering every application key of `group`.
pub fn data_range(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    (group_space(group, SPACE_DATA, 0), group_space(group, SPACE_DATA + 1, 0))
}

/// `[start, end)` covering every key of `group` (log, raft records and data).
///
/// The end is `[group][0xFF]`: no key space reaches 0xFF, so this also works for group 0xFFFF.
pub fn group_range(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    (group.to_be_bytes().to_vec(), group_space(group, 0xFF, 0))
}

/// The key of the node-level record `name` (for example `node_key(b"cluster_id")`).
pub fn node_key(name: &[u8]) -> Vec<u8> {
    let mut k = group_space(NODE_GROUP, SPACE_NODE, name.len());
    k.extend_from_slice(name);
    k
}

/// Renders a key for error messages: hex, with the group and space spelled out when known.
pub fn describe(key: &[u8]) -> String {
    if let Some((g, idx)) = decode_log_key(key) {
        return format!("group {g} log entry {idx}");
    }
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    if key.len() >= 3 {
        let g = u16::from_be_bytes([key[0], key[1]]);
        let space = match key[2] {
            SPACE_NODE if g == NODE_GROUP => "node",
            SPACE_RAFT => "raft",
            SPACE_DATA => "data",
            _ => "unknown",
        };
        return format!("group {g} {space} key 0x{hex}");
    }
    format!("key 0x{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_group_then_index() {
        let mut keys =
            vec![log_key(2, 1), log_key(1, 256), log_key(1, 2), log_key(1, u64::MAX), log_key(0, 9)];
        keys.sort();
        assert_eq!(
            keys,
            vec![log_key(0, 9), log_key(1, 2), log_key(1, 256), log_key(1, u64::MAX), log_key(2, 1)]
        );
    }

    #[test]
    fn log_key_round_trips_and_rejects_other_keys() {
        assert_eq!(decode_log_key(&log_key(7, 123_456)), Some((7, 123_456)));
        assert_eq!(decode_log_key(&raft_key(7, RaftTag::Vote)), None);
        assert_eq!(decode_log_key(&data_key(7, b"12345678")), None);
        assert_eq!(decode_log_key(b""), None);
    }

    #[test]
    fn ranges_contain_their_keys_and_nothing_of_other_groups() {
        let within = |k: &[u8], r: &(Vec<u8>, Vec<u8>)| r.0.as_slice() <= k && k < r.1.as_slice();
        for g in [0u16, 1, 255, 256, NODE_GROUP - 1, NODE_GROUP] {
            let lr = log_range(g);
            let dr = data_range(g);
            let gr = group_range(g);
            assert!(within(&log_key(g, 0), &lr) && within(&log_key(g, u64::MAX), &lr));
            assert!(!within(&raft_key(g, RaftTag::Vote), &lr));
            assert!(within(&raft_key(g, RaftTag::Vote), &raft_range(g)));
            assert!(within(&raft_key(g, RaftTag::SnapshotMeta), &raft_range(g)));
            assert!(!within(&data_key(g, b""), &raft_range(g)));
            assert!(within(&data_key(g, b""), &dr) && within(&data_key(g, &[0xFF; 40]), &dr));
            for k in [log_key(g, 5), raft_key(g, RaftTag::SnapshotMeta), data_key(g, &[0xFF; 9])] {
                assert!(within(&k, &gr));
            }
            if g < NODE_GROUP {
                assert!(!within(&log_key(g + 1, 0), &gr));
                assert!(!within(&data_key(g + 1, b""), &dr));
            }
        }
        assert!(within(&node_key(b"cluster_id"), &group_range(NODE_GROUP)));
    }

    #[test]
    fn fixed_layout() {
        assert_eq!(log_key(0x0102, 3), vec![1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(raft_key(1, RaftTag::Applied), vec![0, 1, 2, 4]);
        assert_eq!(data_key(1, b"a"), vec![0, 1, 3, b'a']);
        assert_eq!(node_key(b"x"), vec![0xFF, 0xFF, 0, b'x']);
        assert_eq!(describe(&log_key(4, 9)), "group 4 log entry 9");
    }
}
