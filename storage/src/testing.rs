//! Test helpers: a raft type config and entry builders.

use openraft::entry::RaftEntry;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::VoteOf;
use openraft::vote::RaftLeaderId;
use openraft::vote::RaftLeaderIdExt;
use openraft::vote::RaftVote;

openraft::declare_raft_types!(
    /// The type config of the crate's unit tests.
    pub(crate) TestConfig:
        D = String,
        R = String,
);

/// The entry type of [`TestConfig`].
pub(crate) type TestEntry = <TestConfig as openraft::RaftTypeConfig>::Entry;

/// A log id of leader (term, node 0).
pub(crate) fn log_id(term: u64, index: u64) -> LogIdOf<TestConfig> {
    LogIdOf::<TestConfig>::new(
        <TestConfig as openraft::RaftTypeConfig>::LeaderId::new_committed(term, 0),
        index,
    )
}

/// A blank entry at (term, index).
pub(crate) fn blank(term: u64, index: u64) -> TestEntry {
    TestEntry::new_blank(log_id(term, index))
}

/// A normal entry carrying `data`.
pub(crate) fn normal(term: u64, index: u64, data: &str) -> TestEntry {
    TestEntry::new_normal(log_id(term, index), data.to_string())
}

/// A vote for node 0 in `term`.
pub(crate) fn vote(term: u64) -> VoteOf<TestConfig> {
    VoteOf::<TestConfig>::from_leader_id(
        <TestConfig as openraft::RaftTypeConfig>::LeaderId::new(term, 0),
        false,
    )
}
