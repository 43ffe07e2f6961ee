//! The state service on one node (no mesh): writes are durable and read
//! back at once, watches deliver changes in order, limits and a full disk
//! refuse writes with clear errors while reads keep working.

use aether_identity::SecretKey;
use aether_kv::{Kv, KvConfig, KvError, StoreError};
use bytes::Bytes;

async fn start(
    dir: &std::path::Path,
    key: &SecretKey,
    config: impl FnOnce(&mut KvConfig),
) -> aether_kv::KvHandle {
    let mut c = KvConfig::new(dir.join("state.redb"));
    config(&mut c);
    Kv::start(c, key.clone(), None).await.expect("start")
}

#[tokio::test]
async fn writes_are_read_back_at_once_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SecretKey::generate();
    let kv = start(dir.path(), &key, |_| {}).await;
    kv.put("app", b"a", Some(Bytes::from_static(b"1")))
        .await
        .expect("put");
    kv.put("app", b"a", Some(Bytes::from_static(b"2")))
        .await
        .expect("put");
    kv.put("app", b"b", Some(Bytes::from_static(b"3")))
        .await
        .expect("put");
    kv.put("app", b"b", None).await.expect("delete");
    let a = kv.get("app", b"a").await.expect("get").expect("present");
    assert_eq!(a.value().map(|v| v.as_ref()), Some(&b"2"[..]));
    let live = kv.list("app", b"", 10).await.expect("list");
    assert_eq!(live.len(), 1, "the deleted entry is not listed");
    let history = kv.history("app", b"a").await.expect("history");
    assert_eq!(history.len(), 2);
    let digest = kv.stats().await.expect("stats").digest;
    drop(kv);
    // The service thread releases the database when its handle is gone.
    let mut again = None;
    for _ in 0..50 {
        let c = KvConfig::new(dir.path().join("state.redb"));
        match Kv::start(c, key.clone(), None).await {
            Ok(kv) => {
                again = Some(kv);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    let kv = again.expect("reopened");
    assert_eq!(kv.stats().await.expect("stats").digest, digest);
    let b = kv
        .get("app", b"b")
        .await
        .expect("get")
        .expect("tombstone kept");
    assert!(b.value().is_none());
}

#[tokio::test]
async fn watchers_receive_matching_changes_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SecretKey::generate();
    let kv = start(dir.path(), &key, |_| {}).await;
    let mut watch = kv.watch("routes", b"/api", 100).await.expect("watch");
    for (k, v) in [
        ("/api/a", "1"),
        ("/web", "x"),
        ("/api/b", "2"),
        ("/api/a", "3"),
    ] {
        kv.put("routes", k.as_bytes(), Some(Bytes::from(v)))
            .await
            .expect("put");
    }
    kv.put("other", b"/api/a", Some(Bytes::from_static(b"no")))
        .await
        .expect("put");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let change = watch.recv().await.expect("change");
        seen.push((
            String::from_utf8_lossy(change.update.key()).into_owned(),
            change
                .update
                .value()
                .map(|v| String::from_utf8_lossy(v).into_owned()),
        ));
    }
    assert_eq!(
        seen,
        [
            ("/api/a".to_string(), Some("1".to_string())),
            ("/api/b".to_string(), Some("2".to_string())),
            ("/api/a".to_string(), Some("3".to_string())),
        ]
    );
    assert!(watch.try_recv().is_err(), "nothing else matched");
}

#[tokio::test]
async fn limits_refuse_writes_with_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SecretKey::generate();
    let kv = start(dir.path(), &key, |c| {
        c.limits.max_value_bytes = 10;
        c.limits.max_bucket_bytes = 30;
    })
    .await;
    let err = kv
        .put("app", b"k", Some(Bytes::from(vec![0u8; 11])))
        .await
        .expect_err("value too large");
    assert!(
        err.to_string().contains("over the limit of 10 bytes"),
        "{err}"
    );
    kv.put("app", b"k1", Some(Bytes::from(vec![0u8; 10])))
        .await
        .expect("fits");
    kv.put("app", b"k2", Some(Bytes::from(vec![0u8; 10])))
        .await
        .expect("fits");
    let err = kv
        .put("app", b"k3", Some(Bytes::from(vec![0u8; 10])))
        .await
        .expect_err("bucket full");
    assert!(err.to_string().contains("bucket `app` would hold"), "{err}");
    // Overwriting with a smaller value is always allowed.
    kv.put("app", b"k1", Some(Bytes::from_static(b"x")))
        .await
        .expect("shrink");
    let err = kv
        .put("app", b"", Some(Bytes::new()))
        .await
        .expect_err("empty key");
    assert!(err.to_string().contains("key is empty"), "{err}");
}

#[tokio::test]
async fn a_full_disk_refuses_writes_and_keeps_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SecretKey::generate();
    // Demand more free space than any disk has: the disk counts as full.
    let kv = start(dir.path(), &key, |_| {}).await;
    kv.put("app", b"kept", Some(Bytes::from_static(b"v")))
        .await
        .expect("put");
    drop(kv);
    let mut full = None;
    for _ in 0..50 {
        let mut c = KvConfig::new(dir.path().join("state.redb"));
        c.limits.min_free_disk_bytes = u64::MAX;
        if let Ok(kv) = Kv::start(c, key.clone(), None).await {
            full = Some(kv);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let kv = full.expect("reopened");
    let err = kv
        .put("app", b"new", Some(Bytes::from_static(b"v")))
        .await
        .expect_err("disk full");
    assert!(
        matches!(err, KvError::Store(StoreError::DiskFull { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("disk"), "{err}");
    let kept = kv.get("app", b"kept").await.expect("get").expect("kept");
    assert_eq!(kept.value().map(|v| v.as_ref()), Some(&b"v"[..]));
    assert!(kv.get("app", b"new").await.expect("get").is_none());
}

#[tokio::test]
async fn tombstones_are_collected_after_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SecretKey::generate();
    let kv = start(dir.path(), &key, |c| {
        c.tombstone_grace = std::time::Duration::ZERO;
    })
    .await;
    kv.put("app", b"gone", Some(Bytes::from_static(b"v")))
        .await
        .expect("put");
    kv.put("app", b"gone", None).await.expect("delete");
    kv.put("app", b"kept", Some(Bytes::from_static(b"v")))
        .await
        .expect("put");
    // Alone, this node is every live node: the tombstone goes at the next
    // housekeeping tick (once a second).
    let mut collected = false;
    for _ in 0..40 {
        if kv.get("app", b"gone").await.expect("get").is_none() {
            collected = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(collected, "the tombstone was not collected");
    assert!(
        kv.history("app", b"gone")
            .await
            .expect("history")
            .is_empty()
    );
    assert!(kv.get("app", b"kept").await.expect("get").is_some());
    assert_eq!(
        kv.stats().await.expect("stats").sync.tombstones_collected,
        1
    );
}
