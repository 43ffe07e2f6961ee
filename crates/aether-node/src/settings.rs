//! Lattice-wide settings: one record in the replicated state bucket [`SETTINGS_BUCKET`], the same
//! for every node, changed through the admin API (`GET /v1/settings`,
//! `PUT /v1/settings/NAME`) and followed by every node as it changes.

use std::sync::Arc;

use aether_admin::types::LatticeSettings;
use aether_kv::KvHandle;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Response, StatusCode};

use crate::admin_response::{AdminBody, error, json};

/// The state bucket holding the settings.
pub(crate) const SETTINGS_BUCKET: &str = "sys:settings";
/// The key of the one record in it.
const KEY: &[u8] = b"lattice";

/// The settings as this node last read them.
#[derive(Default)]
pub(crate) struct Settings {
    current: ArcSwap<LatticeSettings>,
}

impl Settings {
    /// The settings now.
    pub(crate) fn get(&self) -> Arc<LatticeSettings> {
        self.current.load_full()
    }
}

fn decode(value: Option<&Bytes>) -> LatticeSettings {
    value
        .and_then(|v| serde_json::from_slice(v).ok())
        .unwrap_or_default()
}

/// Starts following the settings in the state.
pub(crate) fn start(kv: KvHandle) -> Arc<Settings> {
    let settings = Arc::new(Settings::default());
    tokio::spawn(follow(kv, settings.clone()));
    settings
}

async fn follow(kv: KvHandle, settings: Arc<Settings>) {
    let Ok(mut watch) = kv.watch(SETTINGS_BUCKET, KEY, 16).await else {
        tracing::warn!("cannot follow the lattice settings");
        return;
    };
    if let Ok(Some(entry)) = kv.get(SETTINGS_BUCKET, KEY).await {
        settings.current.store(Arc::new(decode(entry.value())));
    }
    while let Some(change) = watch.recv().await {
        if change.update.key() == KEY {
            let next = decode(change.update.value());
            if *settings.current.load_full() != next {
                tracing::info!(?next, "lattice settings changed");
            }
            settings.current.store(Arc::new(next));
        }
    }
}

/// A boolean setting's value: `true`/`false`, `on`/`off`, `yes`/`no`, `1`/`0`.
fn boolean(body: &[u8]) -> Option<bool> {
    match String::from_utf8_lossy(body)
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "true" | "on" | "yes" | "1" => Some(true),
        "false" | "off" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// `GET /v1/settings` and `PUT /v1/settings/NAME`.
pub(crate) async fn handle(
    kv: &KvHandle,
    method: &Method,
    rest: &[&str],
    body: Bytes,
) -> Response<AdminBody> {
    let read = || async {
        kv.get(SETTINGS_BUCKET, KEY)
            .await
            .map(|e| decode(e.as_ref().and_then(|e| e.value())))
    };
    match (method, rest) {
        (&Method::GET, []) => match read().await {
            Ok(s) => json(StatusCode::OK, &s),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        (&Method::PUT, [name]) => {
            let mut settings = match read().await {
                Ok(s) => s,
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            };
            match name.replace('-', "_").as_str() {
                "virtual_addresses" => match boolean(&body) {
                    Some(on) => settings.virtual_addresses = on,
                    None => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "`{name}` takes on or off (true/false), not `{}`",
                                String::from_utf8_lossy(&body).trim()
                            ),
                        );
                    }
                },
                _ => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!("no lattice setting `{name}` (known: virtual-addresses)"),
                    );
                }
            }
            let value = serde_json::to_vec(&settings).unwrap_or_default();
            match kv.put(SETTINGS_BUCKET, KEY, Some(Bytes::from(value))).await {
                Ok(_) => json(StatusCode::OK, &settings),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} /v1/settings/{}", rest.join("/")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::boolean;

    #[test]
    fn booleans_read_the_usual_spellings_and_refuse_others() {
        assert_eq!(boolean(b"on\n"), Some(true));
        assert_eq!(boolean(b"False"), Some(false));
        assert_eq!(boolean(b"1"), Some(true));
        assert_eq!(boolean(b"maybe"), None);
    }
}
