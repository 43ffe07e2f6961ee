//! The node's durable copy of the lattice state: one redb file holding the
//! append-only history of every accepted update, per entry.
//!
//! The table `history` maps `(entry, seq)` to the update's canonical
//! encoding, where `entry` is the bucket (length-prefixed) followed by the
//! key and `seq` rises with every append. An update is acknowledged only
//! after the transaction that appends it has committed (fsync). On start the
//! history is replayed into the in-memory core; the merge rule is
//! order-independent, so the replay order does not matter.

use std::path::{Path, PathBuf};

use aether_state::SignedUpdate;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

/// `(entry, seq)` → encoded update.
const HISTORY: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("history");
/// `"next_seq"` → the next sequence number.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk is full: writes are refused, reads keep working.
    #[error("the disk holding {path} is full: the write was refused (reads keep working)")]
    DiskFull {
        /// The database file.
        path: PathBuf,
    },
    /// Any other database or I/O failure.
    #[error("state database {path}: {reason}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A stored update does not decode (the file was altered or damaged).
    #[error("state database {path}: a stored update does not decode: {reason}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The durable history of one node.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// The entry part of a history key: `u16 bucket length`, bucket, key.
pub fn entry_key(bucket: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + bucket.len() + key.len());
    out.extend_from_slice(&(bucket.len() as u16).to_be_bytes());
    out.extend_from_slice(bucket.as_bytes());
    out.extend_from_slice(key);
    out
}

fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

impl Store {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Database {
            path: path.to_path_buf(),
            reason: match e {
                redb::DatabaseError::DatabaseAlreadyOpen => "another process (another aether-d on \
                     the same --data-dir?) has it open"
                    .to_string(),
                other => other.to_string(),
            },
        })?;
        let store = Self {
            db,
            path: path.to_path_buf(),
        };
        // Make sure both tables exist so readers never see "no such table".
        store.write(|_, _| Ok(()))?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, e: impl std::fmt::Display + Into<redb::Error>) -> StoreError {
        let text = e.to_string();
        match e.into() {
            redb::Error::Io(io) if is_disk_full(&io) => StoreError::DiskFull {
                path: self.path.clone(),
            },
            _ => StoreError::Database {
                path: self.path.clone(),
                reason: text,
            },
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<(&[u8], u64), &[u8]>, &mut u64) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.error(e))?;
            let mut history = tx.open_table(HISTORY).map_err(|e| self.error(e))?;
            let mut seq = meta
                .get("next_seq")
                .map_err(|e| self.error(e))?
                .map_or(0, |v| v.value());
            f(&mut history, &mut seq)?;
            meta.insert("next_seq", seq).map_err(|e| self.error(e))?;
        }
        tx.commit().map_err(|e| self.error(e))
    }

    /// Appends `updates` in one durable transaction; returns once they are on
    /// disk. On error nothing of the batch is stored.
    pub fn append(&self, updates: &[SignedUpdate]) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        self.write(|history, seq| {
            for u in updates {
                let key = entry_key(u.bucket(), u.key());
                let bytes = u.encode();
                history
                    .insert((key.as_slice(), *seq), bytes.as_slice())
                    .map_err(|e| self.error(e))?;
                *seq += 1;
            }
            Ok(())
        })
    }

    /// Every stored update (for the replay at start).
    pub fn load_all(&self) -> Result<Vec<SignedUpdate>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.error(e))?;
        let history = tx.open_table(HISTORY).map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for item in history.iter().map_err(|e| self.error(e))? {
            let (_, value) = item.map_err(|e| self.error(e))?;
            out.push(self.decode(value.value())?);
        }
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<SignedUpdate, StoreError> {
        SignedUpdate::decode(bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// The history of one entry, oldest first.
    pub fn history(&self, bucket: &str, key: &[u8]) -> Result<Vec<SignedUpdate>, StoreError> {
        let entry = entry_key(bucket, key);
        let tx = self.db.begin_read().map_err(|e| self.error(e))?;
        let history = tx.open_table(HISTORY).map_err(|e| self.error(e))?;
        let range = history
            .range((entry.as_slice(), 0)..=(entry.as_slice(), u64::MAX))
            .map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for item in range {
            let (_, value) = item.map_err(|e| self.error(e))?;
            out.push(self.decode(value.value())?);
        }
        Ok(out)
    }

    /// Removes the whole history of one entry (a tombstone every live node
    /// has seen). Returns how many updates were removed.
    pub fn forget(&self, bucket: &str, key: &[u8]) -> Result<usize, StoreError> {
        let entry = entry_key(bucket, key);
        let mut removed = 0;
        self.write(|history, _| {
            let seqs: Vec<u64> = history
                .range((entry.as_slice(), 0)..=(entry.as_slice(), u64::MAX))
                .map_err(|e| self.error(e))?
                .filter_map(|item| item.ok().map(|(k, _)| k.value().1))
                .collect();
            for seq in seqs {
                history
                    .remove((entry.as_slice(), seq))
                    .map_err(|e| self.error(e))?;
                removed += 1;
            }
            Ok(())
        })?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_identity::SecretKey;
    use aether_state::Replica;
    use bytes::Bytes;

    fn updates(n: usize) -> Vec<SignedUpdate> {
        let key = SecretKey::from_bytes(&[3; 32]);
        let mut replica = Replica::default();
        (0..n)
            .map(|i| {
                let k = format!("k{}", i % 5);
                replica
                    .write(
                        &key,
                        if i % 2 == 0 { "a" } else { "b" },
                        Bytes::from(k),
                        Some(Bytes::from(format!("v{i}"))),
                        1_000 + i as u64,
                    )
                    .expect("write")
            })
            .collect()
    }

    #[test]
    fn appended_updates_survive_reopening_with_their_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let all = updates(20);
        {
            let store = Store::open(&path).expect("open");
            store.append(&all[..10]).expect("append");
            store.append(&all[10..]).expect("append");
        }
        let store = Store::open(&path).expect("reopen");
        let mut loaded: Vec<Vec<u8>> = store
            .load_all()
            .expect("load")
            .iter()
            .map(|u| u.encode())
            .collect();
        let mut expected: Vec<Vec<u8>> = all.iter().map(|u| u.encode()).collect();
        loaded.sort();
        expected.sort();
        assert_eq!(loaded, expected);
        // History of one entry, oldest first.
        let h = store.history("a", b"k0").expect("history");
        let values: Vec<&[u8]> = h
            .iter()
            .filter_map(|u| u.value().map(|v| v.as_ref()))
            .collect();
        assert_eq!(values, [&b"v0"[..], b"v10"]);
        assert_eq!(store.forget("a", b"k0").expect("forget"), 2);
        assert!(store.history("a", b"k0").expect("history").is_empty());
        assert_eq!(store.load_all().expect("load").len(), 18);
    }

    #[test]
    fn a_damaged_record_is_reported_not_panicked_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let store = Store::open(&path).expect("open");
        store
            .write(|history, seq| {
                history
                    .insert((&b"\x00\x01xk"[..], *seq), &b"garbage"[..])
                    .map_err(|e| store.error(e))?;
                *seq += 1;
                Ok(())
            })
            .expect("raw insert");
        let err = store.load_all().expect_err("corrupt");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }
}
