//! `/v1/kv…` on the admin API: the lattice state for people (`alkahest kv`).
//!
//! - `GET /v1/kv`: entries, digest, counters of this node's replica;
//! - `GET /v1/kv/BUCKET?key=K`: one entry (404 when absent or deleted);
//! - `GET /v1/kv/BUCKET?prefix=P&limit=N`: live entries in key order;
//! - `PUT /v1/kv/BUCKET?key=K` with the value as body; `DELETE …?key=K`;
//! - `GET /v1/kv/BUCKET/history?key=K`: every stored update of the entry.

use std::collections::BTreeMap;

use aether_admin::types::{KvEntryJson, KvSummaryJson};
use aether_kv::{KvError, KvHandle, StoreError};
use aether_state::SignedUpdate;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Response, StatusCode};

use crate::admin_response::{AdminBody, error, json};

/// The JSON form of one update.
pub(crate) fn entry_json(u: &SignedUpdate) -> KvEntryJson {
    let node = |id: &aether_state::NodeId| {
        aether_identity::PublicKey::from_bytes(&id.0)
            .map(|k| k.to_string())
            .unwrap_or_else(|_| hex_of(&id.0))
    };
    KvEntryJson {
        bucket: u.bucket().to_string(),
        key: String::from_utf8_lossy(u.key()).into_owned(),
        value: u.value().map(|v| String::from_utf8_lossy(v).into_owned()),
        value_base64: u
            .value()
            .map(|v| base64::engine::general_purpose::STANDARD.encode(v)),
        deleted: u.value().is_none(),
        timestamp_ms: u.timestamp().physical_ms,
        logical: u.timestamp().logical,
        origin: node(u.origin()),
        version: u
            .vector()
            .iter()
            .map(|(id, n)| (node(id), *n))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kv_error(e: KvError) -> Response<AdminBody> {
    let status = match &e {
        KvError::Store(StoreError::DiskFull { .. }) => StatusCode::INSUFFICIENT_STORAGE,
        KvError::Store(_) | KvError::Stopped => StatusCode::INTERNAL_SERVER_ERROR,
        KvError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    error(status, e.to_string())
}

pub(crate) async fn handle(
    kv: &KvHandle,
    method: &Method,
    path: &[&str],
    query: Option<&str>,
    body: Bytes,
) -> Response<AdminBody> {
    let params: BTreeMap<String, String> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    match (method, path) {
        (&Method::GET, []) => match kv.stats().await {
            Ok(s) => json(
                StatusCode::OK,
                &KvSummaryJson {
                    entries: s.entries,
                    digest: hex_of(&s.digest),
                    pending: s.pending,
                    applied: s.sync.applied,
                    forged: s.sync.forged,
                    unknown_or_revoked_origin: s.sync.unknown_origin + s.sync.revoked_origin,
                },
            ),
            Err(e) => kv_error(e),
        },
        (&Method::GET, [bucket]) => {
            if let Some(key) = params.get("key") {
                return match kv.get(bucket, key.as_bytes()).await {
                    Ok(Some(e)) if e.value().is_some() => {
                        json(StatusCode::OK, &entry_json(e.winner()))
                    }
                    Ok(_) => error(
                        StatusCode::NOT_FOUND,
                        format!("no entry `{key}` in bucket `{bucket}`"),
                    ),
                    Err(e) => kv_error(e),
                };
            }
            let prefix = params.get("prefix").map_or("", String::as_str);
            let limit = params
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(1000usize);
            match kv.list(bucket, prefix.as_bytes(), limit).await {
                Ok(entries) => json(
                    StatusCode::OK,
                    &entries
                        .iter()
                        .map(|e| entry_json(e.winner()))
                        .collect::<Vec<_>>(),
                ),
                Err(e) => kv_error(e),
            }
        }
        (&Method::GET, [bucket, "history"]) => {
            let Some(key) = params.get("key") else {
                return error(StatusCode::BAD_REQUEST, "history needs ?key=");
            };
            match kv.history(bucket, key.as_bytes()).await {
                Ok(list) => json(
                    StatusCode::OK,
                    &list.iter().map(entry_json).collect::<Vec<_>>(),
                ),
                Err(e) => kv_error(e),
            }
        }
        (&Method::PUT | &Method::DELETE, [bucket]) => {
            let Some(key) = params.get("key") else {
                return error(StatusCode::BAD_REQUEST, "a write needs ?key=");
            };
            let value = (*method == Method::PUT).then_some(body);
            match kv.put(bucket, key.as_bytes(), value).await {
                Ok(e) => json(StatusCode::OK, &entry_json(e.winner())),
                Err(e) => kv_error(e),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} /v1/kv/{}", path.join("/")),
        ),
    }
}
