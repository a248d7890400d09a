//! Consent records copied from one registry to another: a hub serves its records in id
//! order ([`ConsentRegistry::list_from`]) and each worker that follows it adds them to its
//! own `registry.db` under the same ids and times ([`ConsentRegistry::mirror`]), so every
//! worker decides, and erases, with the hub's records.

use rusqlite::{params, OptionalExtension as _};

use super::{commit_with_head, insert_record, sqlite, Consent, ConsentRegistry};
use crate::store::StoreError;

/// Why records of the hub cannot be added here.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("consent record {id} of registry.db differs from the hub's record {id}: this registry holds records that were not copied from the hub (a worker following a hub takes consent changes only from it); record changes at the hub, and start the worker on a fresh data directory")]
    Differs { id: i64 },
    #[error("registry.db holds consent records up to id {local}, but not the hub's record {id}: it was written to besides the hub's copies; record changes at the hub, and start the worker on a fresh data directory")]
    Gap { id: i64, local: i64 },
    #[error("the hub's records are not in id order ({id} after {after})")]
    Order { id: i64, after: i64 },
    #[error("the hub's consent record {id} cannot be kept: {why}")]
    Unreadable {
        id: i64,
        why: crate::consent::InvalidChange,
    },
}

impl MirrorError {
    /// Whether asking again cannot help: the copies disagree, or a record cannot be kept.
    pub fn is_for_good(&self) -> bool {
        !matches!(self, MirrorError::Store(_))
    }
}

impl ConsentRegistry {
    /// Up to `limit` records from id `first` on, in id order.
    pub fn list_from(&self, first: i64, limit: usize) -> Result<Vec<Consent>, StoreError> {
        self.select(
            "SELECT id, citizen, grantee, purpose, data_types, valid_from_ms, valid_until_ms,
                    recorded_ms, source, granted, erase
             FROM consents WHERE id >= ?1 ORDER BY id LIMIT ?2",
            params![first, i64::try_from(limit).unwrap_or(i64::MAX)],
        )
    }

    /// The newest record's id; 0 when there is none.
    pub fn last_id(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM consents", [], |r| {
                r.get(0)
            })
            .map_err(sqlite(&self.path))
    }

    /// Adds the hub's `records` (in id order) that this registry lacks, each under its own id
    /// and time, with an audit entry naming `hub`, in one transaction. A record this registry
    /// holds already must be the same; one it lacks must come after every record it holds.
    /// Gives how many were added.
    pub fn mirror(
        &mut self,
        records: &[Consent],
        hub: &str,
        now_ms: i64,
    ) -> Result<usize, MirrorError> {
        for pair in records.windows(2) {
            if pair[1].id <= pair[0].id {
                return Err(MirrorError::Order {
                    id: pair[1].id,
                    after: pair[0].id,
                });
            }
        }
        for record in records {
            record
                .change
                .check_texts()
                .map_err(|why| MirrorError::Unreadable { id: record.id, why })?;
        }
        let path = self.path.clone();
        let local = self.last_id()?;
        let held = records
            .iter()
            .filter(|r| r.id <= local)
            .map(|r| Ok((r, self.held(r.id)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        for (record, here) in held {
            match here {
                Some(here) if here == *record => {}
                Some(_) => return Err(MirrorError::Differs { id: record.id }),
                None => {
                    return Err(MirrorError::Gap {
                        id: record.id,
                        local,
                    })
                }
            }
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite(&path))?;
        let mut head = None;
        let mut added = 0;
        for record in records.iter().filter(|r| r.id > local) {
            let (_, new_head) = insert_record(
                &tx,
                &path,
                Some(record.id),
                record.change.clone(),
                record.recorded_ms,
                now_ms,
                Some(hub),
            )?;
            head = Some(new_head);
            added += 1;
        }
        match head {
            Some(head) => commit_with_head(tx, &path, head)?,
            None => drop(tx),
        }
        Ok(added)
    }

    /// The record numbered `id`, if this registry holds it.
    fn held(&self, id: i64) -> Result<Option<Consent>, StoreError> {
        let exists = self
            .conn
            .query_row("SELECT 1 FROM consents WHERE id = ?1", [id], |_| Ok(()))
            .optional()
            .map_err(sqlite(&self.path))?;
        if exists.is_none() {
            return Ok(None);
        }
        Ok(self.list_from(id, 1)?.into_iter().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::{ConsentChange, Purpose};

    fn grant(citizen: &str) -> ConsentChange {
        ConsentChange {
            citizen: citizen.into(),
            grantee: crate::consent::HUB.into(),
            purpose: Purpose::Collect,
            data_types: vec!["heart_rate".into()],
            valid_from_ms: None,
            valid_until_ms: Some(2_000_000_000_000),
            source: "form 12".into(),
            granted: true,
            erase: false,
        }
    }

    fn registries() -> (tempfile::TempDir, ConsentRegistry, ConsentRegistry) {
        let dir = tempfile::tempdir().expect("dir");
        let hub = ConsentRegistry::open(&dir.path().join("hub.db")).expect("hub");
        let worker = ConsentRegistry::open(&dir.path().join("worker.db")).expect("worker");
        (dir, hub, worker)
    }

    #[test]
    fn a_worker_holds_the_hubs_records_under_their_ids_and_times_once() {
        let (_dir, mut hub, mut worker) = registries();
        hub.record(grant("citizen-001"), 1_000).expect("record");
        hub.record(ConsentChange::erasure_of("citizen-002"), 2_000)
            .expect("record");
        let records = hub.list_from(1, 10).expect("list");
        assert_eq!(
            worker
                .mirror(&records, "https://hub", 9_000)
                .expect("mirror"),
            2
        );
        assert_eq!(worker.list(None).expect("list"), records);
        assert_eq!(
            worker.pending_erasures().expect("pending")[0].recorded_ms,
            2_000
        );
        // Asked again from the last one held: that one is checked, nothing is added.
        let again = hub.list_from(2, 10).expect("list");
        assert_eq!(
            worker.mirror(&again, "https://hub", 9_500).expect("mirror"),
            0
        );
        hub.record(grant("citizen-003"), 3_000).expect("record");
        let next = hub.list_from(2, 10).expect("list");
        assert_eq!(
            worker.mirror(&next, "https://hub", 9_900).expect("mirror"),
            1
        );
        assert_eq!(worker.last_id().expect("last"), 3);
        let report = worker.verify_audit().expect("audit");
        assert_eq!(report.entries, 3);
    }

    #[test]
    fn records_written_beside_the_hubs_copies_stop_the_mirror() {
        let (_dir, mut hub, mut worker) = registries();
        hub.record(grant("citizen-001"), 1_000).expect("record");
        hub.record(grant("citizen-002"), 2_000).expect("record");
        // A change recorded at the worker takes id 1 there.
        worker.record(grant("citizen-009"), 1_500).expect("record");
        let records = hub.list_from(1, 10).expect("list");
        let err = worker
            .mirror(&records, "https://hub", 9_000)
            .expect_err("differs");
        assert!(matches!(err, MirrorError::Differs { id: 1 }), "{err}");
        assert_eq!(worker.last_id().expect("last"), 1, "nothing added");
        let later = hub.list_from(2, 10).expect("list");
        let (_dir2, _, mut ahead) = registries();
        for n in 0..3 {
            ahead
                .record(grant(&format!("citizen-10{n}")), 500)
                .expect("record");
        }
        let err = ahead
            .mirror(&later, "https://hub", 9_000)
            .expect_err("differs");
        assert!(matches!(err, MirrorError::Differs { id: 2 }), "{err}");
        let mut shuffled = records.clone();
        shuffled.reverse();
        let (_dir3, _, mut fresh) = registries();
        let err = fresh
            .mirror(&shuffled, "https://hub", 9_000)
            .expect_err("order");
        assert!(matches!(err, MirrorError::Order { .. }), "{err}");
    }

    #[test]
    fn a_record_of_a_newer_catalogue_is_kept_and_a_bad_identifier_refuses_the_batch() {
        let (_dir, mut hub, mut worker) = registries();
        let first = hub.record(grant("citizen-001"), 1_000).expect("record");
        let newer = Consent {
            id: 2,
            change: ConsentChange {
                data_types: vec!["metric_of_a_newer_hub".into()],
                ..first.change.clone()
            },
            ..first.clone()
        };
        let bad = Consent {
            id: 3,
            change: ConsentChange {
                citizen: "citizen/../x".into(),
                ..first.change.clone()
            },
            ..first.clone()
        };
        let err = worker
            .mirror(&[first.clone(), newer.clone(), bad], "https://hub", 9_000)
            .expect_err("refused");
        assert!(
            matches!(err, MirrorError::Unreadable { id: 3, .. }),
            "{err}"
        );
        assert!(err.is_for_good());
        assert_eq!(worker.last_id().expect("last"), 0, "none is added");
        let added = worker
            .mirror(&[first, newer], "https://hub", 9_000)
            .expect("mirror");
        assert_eq!(added, 2);
    }
}
