//! `wasi:keyvalue` for components, over this node's replica of the lattice
//! state.
//!
//! The runtime has already checked the component's grants and mapped its
//! bucket `NAME` to the lattice bucket `app:NAME`; this adapter only turns the
//! calls into [`KvHandle`] operations. Writes return once durable on this
//! node and are read back here at once; other nodes see them eventually.
//!
//! `increment` and `compare_and_swap` read, decide and write while holding a
//! lock for the key, and `set` and `delete` take the same lock, so on this
//! node they are atomic with respect to every component's operations on that
//! key. Across nodes they are not: concurrent increments of one key on two
//! nodes each write their own result, and the merge rule of the lattice state
//! keeps one of them everywhere (the higher timestamp), not their sum.
//! Writes made through the admin API (`alkahest kv`) do not take the lock.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};

use aether_kv::KvHandle;
use aether_runtime::keyvalue::increment_counter;
use aether_runtime::{CasOutcome, KeyPage, KeyValueBackend, KeyValueError, KvFuture};
use bytes::Bytes;
use tokio::sync::{Mutex, MutexGuard};

/// Lock shards: keys hash onto these, so memory stays bounded however many
/// keys there are (two keys of one shard merely wait for each other).
const LOCK_SHARDS: usize = 256;

/// [`KeyValueBackend`] over the node's lattice state.
pub(crate) struct LatticeKeyValue {
    kv: KvHandle,
    locks: Box<[Mutex<()>]>,
}

impl LatticeKeyValue {
    pub(crate) fn new(kv: KvHandle) -> Self {
        Self {
            kv,
            locks: (0..LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
        }
    }

    async fn lock(&self, bucket: &str, key: &str) -> MutexGuard<'_, ()> {
        let mut h = DefaultHasher::new();
        bucket.hash(&mut h);
        key.hash(&mut h);
        let shard = (h.finish() % LOCK_SHARDS as u64) as usize;
        self.locks[shard].lock().await
    }

    async fn read(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KeyValueError> {
        let entry = self.kv.get(bucket, key.as_bytes()).await.map_err(error)?;
        Ok(entry.and_then(|e| e.value().map(|v| v.to_vec())))
    }

    async fn write(
        &self,
        bucket: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), KeyValueError> {
        self.kv
            .put(bucket, key.as_bytes(), value.map(Bytes::from))
            .await
            .map(drop)
            .map_err(error)
    }
}

fn error(e: aether_kv::KvError) -> KeyValueError {
    KeyValueError(e.to_string())
}

impl KeyValueBackend for LatticeKeyValue {
    fn get<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(self.read(bucket, key))
    }

    fn set<'a>(&'a self, bucket: &'a str, key: &'a str, value: Vec<u8>) -> KvFuture<'a, ()> {
        Box::pin(async move {
            let _guard = self.lock(bucket, key).await;
            self.write(bucket, key, Some(value)).await
        })
    }

    fn delete<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, ()> {
        Box::pin(async move {
            let _guard = self.lock(bucket, key).await;
            // Deleting an absent key writes no tombstone.
            if self.read(bucket, key).await?.is_none() {
                return Ok(());
            }
            self.write(bucket, key, None).await
        })
    }

    fn list_keys<'a>(
        &'a self,
        bucket: &'a str,
        cursor: Option<u64>,
        limit: usize,
    ) -> KvFuture<'a, KeyPage> {
        Box::pin(async move {
            // The cursor is the number of keys (in key order) already returned.
            let skip = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
            let want = skip.saturating_add(limit).saturating_add(1);
            let entries = self.kv.list(bucket, b"", want).await.map_err(error)?;
            let more = entries.len() > skip.saturating_add(limit);
            let keys: Vec<String> = entries
                .iter()
                .skip(skip)
                .take(limit)
                .map(|e| String::from_utf8_lossy(e.winner().key()).into_owned())
                .collect();
            let cursor = more.then(|| (skip + keys.len()) as u64);
            Ok(KeyPage { keys, cursor })
        })
    }

    fn increment<'a>(&'a self, bucket: &'a str, key: &'a str, delta: u64) -> KvFuture<'a, u64> {
        Box::pin(async move {
            let _guard = self.lock(bucket, key).await;
            let current = self.read(bucket, key).await?;
            let next = increment_counter(key, current.as_deref(), delta)?;
            self.write(bucket, key, Some(next.to_string().into_bytes()))
                .await?;
            Ok(next)
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: Vec<u8>,
    ) -> KvFuture<'a, CasOutcome> {
        Box::pin(async move {
            let _guard = self.lock(bucket, key).await;
            let current = self.read(bucket, key).await?;
            if current.as_deref() != expected {
                return Ok(CasOutcome::Mismatch { current });
            }
            self.write(bucket, key, Some(new)).await?;
            Ok(CasOutcome::Swapped)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    async fn backend() -> (tempfile::TempDir, Arc<LatticeKeyValue>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = aether_kv::Kv::start(
            aether_kv::KvConfig::new(dir.path().join("state.redb")),
            aether_identity::SecretKey::generate(),
            None,
        )
        .await
        .expect("state service");
        (dir, Arc::new(LatticeKeyValue::new(kv)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_increments_on_one_node_lose_nothing() {
        let (_dir, kv) = backend().await;
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let kv = kv.clone();
                tokio::spawn(async move { kv.increment("app:c", "hits", 1).await })
            })
            .collect();
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.expect("task").expect("increment"));
        }
        seen.sort_unstable();
        assert_eq!(seen, (1..=40).collect::<Vec<u64>>());
        assert_eq!(
            kv.get("app:c", "hits").await.expect("get"),
            Some(b"40".to_vec())
        );
        kv.set("app:c", "text", b"x".to_vec()).await.expect("set");
        let e = kv.increment("app:c", "text", 1).await.unwrap_err();
        assert!(e.0.contains("not a decimal"), "{e}");
    }

    #[tokio::test]
    async fn compare_and_swap_writes_only_on_a_match() {
        let (_dir, kv) = backend().await;
        let swap = |expected: Option<&'static [u8]>, new: &'static [u8]| {
            let kv = kv.clone();
            async move {
                kv.compare_and_swap("app:c", "k", expected, new.to_vec())
                    .await
                    .expect("cas")
            }
        };
        assert_eq!(swap(None, b"1").await, CasOutcome::Swapped);
        assert_eq!(
            swap(None, b"2").await,
            CasOutcome::Mismatch {
                current: Some(b"1".to_vec())
            }
        );
        assert_eq!(swap(Some(b"1"), b"2").await, CasOutcome::Swapped);
        assert_eq!(
            kv.get("app:c", "k").await.expect("get"),
            Some(b"2".to_vec())
        );
    }

    #[tokio::test]
    async fn delete_exists_and_paged_listing() {
        let (_dir, kv) = backend().await;
        for i in 0..5 {
            kv.set("app:l", &format!("k{i}"), vec![b'v'])
                .await
                .expect("set");
        }
        kv.set("app:other", "x", vec![1]).await.expect("set");
        kv.delete("app:l", "k2").await.expect("delete");
        kv.delete("app:l", "never").await.expect("delete absent");
        assert!(!kv.exists("app:l", "k2").await.expect("exists"));
        assert!(kv.exists("app:l", "k3").await.expect("exists"));
        let first = kv.list_keys("app:l", None, 2).await.expect("page 1");
        assert_eq!(first.keys, ["k0", "k1"]);
        let second = kv
            .list_keys("app:l", first.cursor, 2)
            .await
            .expect("page 2");
        assert_eq!(second.keys, ["k3", "k4"]);
        assert_eq!(second.cursor, None, "{second:?}");
        let past = kv
            .list_keys("app:l", Some(u64::MAX), 2)
            .await
            .expect("past");
        assert!(past.keys.is_empty() && past.cursor.is_none());
    }
}
