//! Partition leases in a JetStream KV bucket ([`LEASES_BUCKET`]).
//!
//! `partition.<n>` names the process evaluating partition n; `member.<id>` says that process
//! `id` is alive and wants a share of the partitions. The bucket's `max_age` is the lease time:
//! a key not written again within it disappears. A process holds a partition by creating its key
//! (which fails if another holds it) and keeps it by updating it at the revision it last wrote,
//! so a lease that expired and was taken by someone else can never be renewed by mistake.

use std::collections::BTreeMap;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use futures::TryStreamExt;

pub use crate::topology::LEASES_BUCKET;

const PARTITION: &str = "partition.";
const MEMBER: &str = "member.";

/// Why a lease could not be renewed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// Someone else wrote the key since: the lease expired and was taken, or was released.
    #[error("the lease is held by another process now")]
    Lost,
    /// The bucket could not be reached; the lease may still be ours.
    #[error("could not reach the lease bucket: {0}")]
    Unreachable(String),
}

/// Who holds what, as read from the bucket.
#[derive(Debug, Default)]
pub struct View {
    /// The ids of the evaluate processes alive.
    pub members: Vec<String>,
    /// Partition → owner id.
    pub owners: BTreeMap<u32, String>,
}

/// One process's handle on the bucket.
pub struct Leases {
    kv: kv::Store,
    owner: String,
}

impl Leases {
    pub fn new(kv: kv::Store, owner: String) -> Leases {
        Leases { kv, owner }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Says this process is alive, for the length of one lease.
    pub async fn heartbeat(&self) -> Result<(), kv::PutError> {
        self.kv
            .put(format!("{MEMBER}{}", self.owner), Bytes::new())
            .await
            .map(drop)
    }

    /// Says this process has left.
    pub async fn leave(&self) {
        if let Err(e) = self.kv.delete(format!("{MEMBER}{}", self.owner)).await {
            tracing::debug!(error = %e, "could not leave the lease bucket; it expires");
        }
    }

    /// The members alive and the partitions held.
    pub async fn view(&self, partitions: u32) -> anyhow::Result<View> {
        let mut view = View::default();
        let mut keys = self.kv.keys().await?;
        while let Some(key) = keys.try_next().await? {
            if let Some(member) = key.strip_prefix(MEMBER) {
                view.members.push(member.to_owned());
            }
        }
        // One round trip for all partitions: a round must stay short on a busy server, since a
        // dead holder's partitions wait for it.
        let reads = (0..partitions).map(|partition| async move {
            (partition, self.kv.entry(partition_key(partition)).await)
        });
        for (partition, entry) in futures::future::join_all(reads).await {
            if let Some(entry) = entry? {
                if entry.operation == Operation::Put {
                    let owner = String::from_utf8_lossy(&entry.value).into_owned();
                    view.owners.insert(partition, owner);
                }
            }
        }
        Ok(view)
    }

    /// Takes `partition` if nobody holds it; its revision if taken, `None` if held.
    pub async fn take(&self, partition: u32) -> Result<Option<u64>, kv::CreateError> {
        match self
            .kv
            .create(partition_key(partition), self.owner.clone().into())
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Extends the lease written at `revision`; its new revision.
    pub async fn renew(&self, partition: u32, revision: u64) -> Result<u64, RenewError> {
        self.kv
            .update(
                partition_key(partition),
                self.owner.clone().into(),
                revision,
            )
            .await
            .map_err(|e| match e.kind() {
                UpdateErrorKind::WrongLastRevision => RenewError::Lost,
                _ => RenewError::Unreachable(e.to_string()),
            })
    }

    /// Gives `partition` up, unless someone else holds it already.
    pub async fn release(&self, partition: u32, revision: u64) {
        let key = partition_key(partition);
        if let Err(e) = self.kv.delete_expect_revision(&key, Some(revision)).await {
            tracing::debug!(partition, error = %e, "could not release a lease; it expires");
        }
    }
}

fn partition_key(partition: u32) -> String {
    format!("{PARTITION}{partition}")
}

/// The member that should own each partition among `members`: for each partition in turn,
/// the member with the highest random weight that has not yet reached an even share (every
/// member gets the count divided evenly, some one more). Every
/// process computes the same answer from the same members; each member gets an even share, and
/// a member joining or leaving moves few partitions besides its own.
pub fn assign(members: &[String], partitions: u32) -> Vec<Option<&str>> {
    if members.is_empty() {
        return vec![None; partitions as usize];
    }
    // Every member gets `base` partitions, and `extra` of them one more.
    let base = partitions as usize / members.len();
    let mut extra = partitions as usize % members.len();
    let mut counts = vec![0usize; members.len()];
    (0..partitions)
        .map(|partition| {
            let p = partition.to_string();
            let (chosen, _) = members
                .iter()
                .enumerate()
                .filter(|(i, _)| counts[*i] < base || (counts[*i] == base && extra > 0))
                .max_by_key(|(_, m)| (mix(schemas::subject::fnv1a(&[m, ":", &p])), m.as_str()))
                .expect("the shares cover every partition");
            if counts[chosen] == base {
                extra -= 1;
            }
            counts[chosen] += 1;
            Some(members[chosen].as_str())
        })
        .collect()
}

/// Spreads FNV's weak high bits over the whole word (MurmurHash3's finaliser), so that weights
/// of similar names are not ordered alike.
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_gets_an_even_share() {
        for run in 0..200 {
            for count in 1..=9 {
                let members: Vec<String> =
                    (0..count).map(|i| format!("{run}-{i}-member")).collect();
                let owners = assign(&members, 8);
                for m in &members {
                    let owned = owners.iter().filter(|o| **o == Some(m.as_str())).count();
                    assert!(
                        owned == 8 / count || owned == 8 / count + 1,
                        "{m} owns {owned} of 8 among {count}"
                    );
                }
                assert!(owners.iter().all(Option::is_some));
                // Members may be listed in any order.
                let mut reversed = members.clone();
                reversed.reverse();
                assert_eq!(assign(&reversed, 8), owners);
            }
        }
        assert_eq!(assign(&[], 2), [None, None]);
    }
}
