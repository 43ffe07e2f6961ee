//! `wasi:keyvalue@0.2.0-draft` (`store`, `atomics`, `batch`) for components,
//! backed by whatever the node plugs in as a [`KeyValueBackend`].
//!
//! # Buckets and grants
//!
//! A component may open only the buckets its Aetherfile lists in
//! `capabilities.keyvalue`; `open` of any other name fails with the WIT error
//! `access-denied` (the variant carries no text, so the reason, naming the
//! bucket and the Aetherfile field, goes to the component's log, readable with
//! `alkahest logs`). Bucket `NAME` of a component is the lattice bucket
//! `app:NAME` ([`lattice_bucket`]): manifest bucket names cannot contain `:`,
//! and no system bucket starts with `app:`, so a component never reaches the
//! node's own state. Components that list the same bucket share it.
//!
//! A node with no backend ([`RuntimeConfig::keyvalue`](crate::RuntimeConfig)
//! `None`) still links the interfaces, so components importing them load;
//! their `open` fails with `other("this node has no state store …")`.
//!
//! # Consistency
//!
//! What the backend promises; for the lattice state of `aether-node`:
//! a write returns once it is durable on the node that ran the component, and
//! later reads there see it (read-your-writes). Other nodes see it eventually
//! (pushed at once, anti-entropy every two seconds). Concurrent writes of one
//! key on different nodes are settled by the lattice's merge rule: the write
//! with the higher hybrid-logical-clock timestamp wins everywhere.
//!
//! # Atomics
//!
//! `increment` is atomic **on the node that runs the component**: the backend
//! serialises it with every other component operation on the same key on that
//! node, so concurrent increments there never lose an update. Across nodes it
//! is not: two nodes incrementing the same counter at the same time each
//! write their own result, and the merge rule keeps one of them everywhere,
//! not their sum. A counter that must count across nodes needs one key per
//! node (summed by the reader) or a single writer. Counters are stored as
//! decimal ASCII (`"42"`); a key holding anything else cannot be incremented.
//!
//! The backend's [`KeyValueBackend::compare_and_swap`] has the same scope
//! (atomic against this node's operations, last-writer-wins across nodes).
//! `wasi:keyvalue@0.2.0-draft` has no compare-and-swap function, so guests
//! cannot call it yet; it is there for the `0.2.0-draft2` interfaces.
//!
//! # Batch
//!
//! `get-many`, `set-many` and `delete-many` are loops over the single-key
//! operations: not atomic, and a failure leaves the earlier keys written, as
//! the WIT allows.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::logs::{LogSink, LogStream};

mod generated {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "aether:host/keyvalue",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::OpenBucket,
        },
    });
}

use generated::wasi::keyvalue::{atomics, batch, store};

/// Prefix of the lattice buckets that components' buckets map to.
pub const APP_BUCKET_PREFIX: &str = "app:";

/// The lattice bucket behind a component's bucket `name`: `app:NAME`.
pub fn lattice_bucket(name: &str) -> String {
    format!("{APP_BUCKET_PREFIX}{name}")
}

/// Keys returned by one `list-keys` call at most.
pub const LIST_PAGE: usize = 1000;

/// Buckets one instance may hold open at once (a guard against a guest that
/// opens buckets in a loop and never drops them).
const MAX_OPEN_BUCKETS: usize = 256;

/// A failed backend operation; the guest sees `error::other(message)`, so
/// the message should say what was wrong (e.g. a size limit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyValueError(pub String);

impl KeyValueError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// What a backend operation returns.
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KeyValueError>> + Send + 'a>>;

/// One page of keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPage {
    /// Keys of the page.
    pub keys: Vec<String>,
    /// The cursor for the next page; `None` when this was the last.
    pub cursor: Option<u64>,
}

/// The result of [`KeyValueBackend::compare_and_swap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The value was as expected and has been replaced.
    Swapped,
    /// The value was not as expected (nothing written); this is what it was.
    Mismatch {
        /// The current value (`None`: absent).
        current: Option<Vec<u8>>,
    },
}

/// The store behind `wasi:keyvalue`.
///
/// `bucket` is always the lattice bucket (`app:NAME`, see [`lattice_bucket`]);
/// the runtime checks grants before calling. Keys are the guest's strings.
/// Writes return once durable where the backend keeps them; reads on the same
/// node after a write must see it (read-your-writes).
///
/// [`increment`](Self::increment) and [`compare_and_swap`](Self::compare_and_swap)
/// must be atomic with respect to every other operation of this backend on
/// the same key (serialise them per key, and `set`/`delete` with them).
pub trait KeyValueBackend: Send + Sync + 'static {
    /// The value at `key`, `None` when absent or deleted.
    fn get<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>>;

    /// Writes `value` at `key`.
    fn set<'a>(&'a self, bucket: &'a str, key: &'a str, value: Vec<u8>) -> KvFuture<'a, ()>;

    /// Deletes `key` (nothing when absent).
    fn delete<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, ()>;

    /// Whether `key` holds a value.
    fn exists<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, bool> {
        Box::pin(async move { Ok(self.get(bucket, key).await?.is_some()) })
    }

    /// Up to `limit` keys starting at `cursor` (`None`: the first page). The
    /// cursor is the backend's own token, returned by the previous page.
    fn list_keys<'a>(
        &'a self,
        bucket: &'a str,
        cursor: Option<u64>,
        limit: usize,
    ) -> KvFuture<'a, KeyPage>;

    /// Atomically adds `delta` to the decimal counter at `key` (absent: 0)
    /// and returns the new value. See [`increment_counter`].
    fn increment<'a>(&'a self, bucket: &'a str, key: &'a str, delta: u64) -> KvFuture<'a, u64>;

    /// Atomically writes `new` at `key` if its value is `expected` (`None`:
    /// absent).
    fn compare_and_swap<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: Vec<u8>,
    ) -> KvFuture<'a, CasOutcome>;
}

/// The counter encoding of `increment`: the value after adding `delta` to
/// `current` (absent counts as 0), which must be a decimal `u64` in ASCII.
pub fn increment_counter(
    key: &str,
    current: Option<&[u8]>,
    delta: u64,
) -> Result<u64, KeyValueError> {
    let now = match current {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                KeyValueError(format!(
                    "cannot increment `{key}`: its value is not a decimal unsigned 64-bit number"
                ))
            })?,
    };
    now.checked_add(delta).ok_or_else(|| {
        KeyValueError(format!(
            "cannot increment `{key}` by {delta}: {now} + {delta} overflows an unsigned 64-bit number"
        ))
    })
}

/// A bucket as the guest holds it.
pub struct OpenBucket {
    /// The lattice bucket it maps to.
    lattice: String,
}

/// What one component's instances need for `wasi:keyvalue`; shared by all
/// instances of the component.
pub(crate) struct KeyValueGrants {
    pub(crate) component: Arc<str>,
    /// Buckets from `capabilities.keyvalue`.
    pub(crate) buckets: Vec<String>,
    pub(crate) backend: Option<Arc<dyn KeyValueBackend>>,
    pub(crate) logs: LogSink,
}

/// The `wasi:keyvalue` state of one instance.
pub(crate) struct KeyValueCtx {
    pub(crate) grants: Arc<KeyValueGrants>,
    /// Buckets the instance holds open now.
    pub(crate) open: usize,
}

impl KeyValueCtx {
    pub(crate) fn new(grants: Arc<KeyValueGrants>) -> Self {
        Self { grants, open: 0 }
    }
}

/// The per-instance view the generated bindings call into.
pub(crate) struct KeyValueView<'a> {
    ctx: &'a mut KeyValueCtx,
    table: &'a mut ResourceTable,
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValueView<'a>;
}

impl<'a> KeyValueView<'a> {
    /// A view over one instance's key-value state and resource table.
    pub(crate) fn new(ctx: &'a mut KeyValueCtx, table: &'a mut ResourceTable) -> Self {
        KeyValueView { ctx, table }
    }
}

/// Store data that can lend the key-value view of its instance.
pub(crate) trait KeyValueHost: Send + 'static {
    /// The instance's key-value state and resource table.
    fn keyvalue_view(&mut self) -> KeyValueView<'_>;
}

/// Adds `wasi:keyvalue/{store,atomics,batch}@0.2.0-draft` to `linker`.
pub(crate) fn link<T: KeyValueHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasKeyValue>(linker, T::keyvalue_view)?;
    atomics::add_to_linker::<T, HasKeyValue>(linker, T::keyvalue_view)?;
    batch::add_to_linker::<T, HasKeyValue>(linker, T::keyvalue_view)?;
    Ok(())
}

/// A guest-visible result inside a host result (the outer error traps).
type Answer<T> = wasmtime::Result<Result<T, store::Error>>;

fn other(e: KeyValueError) -> store::Error {
    store::Error::Other(e.0)
}

impl KeyValueView<'_> {
    /// The backend and lattice bucket behind a guest's bucket handle.
    fn target(
        &self,
        bucket: &Resource<OpenBucket>,
    ) -> wasmtime::Result<(Arc<dyn KeyValueBackend>, String)> {
        let open = self.table.get(bucket)?;
        // `open` hands out no bucket without a backend.
        let backend = self
            .ctx
            .grants
            .backend
            .clone()
            .ok_or_else(|| wasmtime::format_err!("wasi:keyvalue bucket without a backend"))?;
        Ok((backend, open.lattice.clone()))
    }
}

impl store::Host for KeyValueView<'_> {
    async fn open(&mut self, identifier: String) -> Answer<Resource<OpenBucket>> {
        let g = self.ctx.grants.clone();
        if !g.buckets.contains(&identifier) {
            let granted = if g.buckets.is_empty() {
                "none".to_string()
            } else {
                g.buckets
                    .iter()
                    .map(|b| format!("`{b}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let message = format!(
                "wasi:keyvalue: access to bucket `{identifier}` denied: it is not in \
                 `capabilities.keyvalue` of the Aetherfile (granted: {granted}); add it there \
                 and deploy again"
            );
            tracing::info!(component = %g.component, "{message}");
            g.logs.push(LogStream::Host, message);
            return Ok(Err(store::Error::AccessDenied));
        }
        if g.backend.is_none() {
            return Ok(Err(store::Error::Other(format!(
                "this node has no state store, so wasi:keyvalue bucket `{identifier}` cannot be \
                 opened; run the component on a node with the lattice state"
            ))));
        }
        if self.ctx.open >= MAX_OPEN_BUCKETS {
            return Ok(Err(store::Error::Other(format!(
                "too many open buckets: an instance may hold at most {MAX_OPEN_BUCKETS}; drop \
                 the ones no longer used"
            ))));
        }
        let lattice = lattice_bucket(&identifier);
        let bucket = self.table.push(OpenBucket { lattice })?;
        self.ctx.open += 1;
        Ok(Ok(bucket))
    }
}

impl store::HostBucket for KeyValueView<'_> {
    async fn get(&mut self, bucket: Resource<OpenBucket>, key: String) -> Answer<Option<Vec<u8>>> {
        let (backend, b) = self.target(&bucket)?;
        Ok(backend.get(&b, &key).await.map_err(other))
    }

    async fn set(
        &mut self,
        bucket: Resource<OpenBucket>,
        key: String,
        value: Vec<u8>,
    ) -> Answer<()> {
        let (backend, b) = self.target(&bucket)?;
        Ok(backend.set(&b, &key, value).await.map_err(other))
    }

    async fn delete(&mut self, bucket: Resource<OpenBucket>, key: String) -> Answer<()> {
        let (backend, b) = self.target(&bucket)?;
        Ok(backend.delete(&b, &key).await.map_err(other))
    }

    async fn exists(&mut self, bucket: Resource<OpenBucket>, key: String) -> Answer<bool> {
        let (backend, b) = self.target(&bucket)?;
        Ok(backend.exists(&b, &key).await.map_err(other))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<OpenBucket>,
        cursor: Option<u64>,
    ) -> Answer<store::KeyResponse> {
        let (backend, b) = self.target(&bucket)?;
        Ok(backend
            .list_keys(&b, cursor, LIST_PAGE)
            .await
            .map(|page| store::KeyResponse {
                keys: page.keys,
                cursor: page.cursor,
            })
            .map_err(other))
    }

    async fn drop(&mut self, bucket: Resource<OpenBucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        self.ctx.open = self.ctx.open.saturating_sub(1);
        Ok(())
    }
}

impl atomics::Host for KeyValueView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<OpenBucket>,
        key: String,
        delta: u64,
    ) -> Answer<u64> {
        let (backend, b) = self.target(&bucket)?;
        Ok(backend.increment(&b, &key, delta).await.map_err(other))
    }
}

impl batch::Host for KeyValueView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<OpenBucket>,
        keys: Vec<String>,
    ) -> Answer<Vec<Option<(String, Vec<u8>)>>> {
        let (backend, b) = self.target(&bucket)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            match backend.get(&b, &key).await {
                Ok(value) => out.push(value.map(|v| (key, v))),
                Err(e) => return Ok(Err(other(e))),
            }
        }
        Ok(Ok(out))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<OpenBucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Answer<()> {
        let (backend, b) = self.target(&bucket)?;
        for (key, value) in key_values {
            if let Err(e) = backend.set(&b, &key, value).await {
                return Ok(Err(other(e)));
            }
        }
        Ok(Ok(()))
    }

    async fn delete_many(&mut self, bucket: Resource<OpenBucket>, keys: Vec<String>) -> Answer<()> {
        let (backend, b) = self.target(&bucket)?;
        for key in keys {
            if let Err(e) = backend.delete(&b, &key).await {
                return Ok(Err(other(e)));
            }
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_decimal_and_checked() {
        assert_eq!(increment_counter("k", None, 5), Ok(5));
        assert_eq!(increment_counter("k", Some(b"41"), 1), Ok(42));
        let e = increment_counter("k", Some(b"forty"), 1).unwrap_err();
        assert!(e.0.contains("`k`") && e.0.contains("decimal"), "{e}");
        let max = u64::MAX.to_string();
        let e = increment_counter("k", Some(max.as_bytes()), 1).unwrap_err();
        assert!(e.0.contains("overflows"), "{e}");
    }

    #[test]
    fn app_buckets_are_prefixed() {
        assert_eq!(lattice_bucket("sessions"), "app:sessions");
    }
}
