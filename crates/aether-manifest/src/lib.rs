//! The `Aetherfile`: the manifest of one Aether component.
//!
//! An Aetherfile is TOML. It is strictly typed: an unknown key, a wrong type, a size or duration
//! without a unit and a value out of range are all errors, reported with the file, line and
//! column, a caret under the offending text and a hint ([`ManifestError`], a
//! [`miette::Diagnostic`]). The same rules are published as a JSON Schema ([`json_schema`],
//! checked in as `schema/aetherfile.schema.json`) and a CUE schema (`schema/aetherfile.cue`), so
//! editors and `cue vet` check Aetherfiles too.
//!
//! Only `name` and `component` are required. Every knob, with its default and why:
//!
//! ```toml
//! # Name of the component, unique in the lattice. 1 to 63 characters of a-z, 0-9 and '-',
//! # starting with a letter: it appears in routes, logs and metric labels.
//! name = "hello"
//! # Optional free-form version shown by `alkahest status`; deployments are identified by the
//! # component's hash, not by this string.
//! version = "1.0.0"
//!
//! # The WebAssembly component. Either a path (`component = "hello.wasm"`) or this table.
//! # Relative paths are relative to the Aetherfile.
//! [component]
//! path = "target/wasm32-wasip2/release/hello.wasm"  # what the build produces (required)
//! build = "cargo build --release --target wasm32-wasip2"  # run by `alkahest build`/`up`; optional
//! workdir = "."  # where `build` runs; default: the Aetherfile's directory
//!
//! [http]
//! # Path prefixes routed to this component; a table form limits a route to one Host.
//! # Default: no routes, so the component gets no HTTP traffic.
//! routes = ["/", { path = "/api", host = "api.example.com" }]
//!
//! [intent]
//! # A fixed count (`replicas = 3`, 1 to 1000) or a range scaled on load; min = 0 allows
//! # scale to zero. Default: 1.
//! replicas = { min = 0, max = 5 }
//! # Regions replicas may be placed in. Default: empty = anywhere.
//! regions = ["eu-west", "ap-southeast"]
//! # Keep p99 latency for users in `from` under `p99` (1ms to 60s). Default: none.
//! latency = { from = "ap-southeast", p99 = "30ms" }
//! # Memory the scheduler reserves per replica (64KiB to 1TiB). Default: none (limits.memory).
//! memory = "128MiB"
//! # Node labels a host must carry. Default: none, any node.
//! labels = { tier = "edge" }
//! # CPU architectures a host must run on: one name or a list ("x86_64", "aarch64",
//! # "riscv64", "s390x"). Default: none, any (the component is compiled on each node).
//! arch = "aarch64"
//! # Spread replicas over regions rather than pack them near users. Default: false, since
//! # packing keeps latency low; enable it to survive the loss of a region.
//! spread = true
//! # Serve only from nodes members can dial directly (not behind NAT). Default: false.
//! reachable = false
//! # With min = 0: idle time before an instance is scaled to zero (1s to 24h).
//! # Default: none, the node's default applies.
//! idle_timeout = "5m"
//!
//! [limits]
//! # Largest linear memory of one instance, 64KiB to 4GiB. Default: 64MiB, enough for typical
//! # handlers while letting a node pack many instances.
//! memory = "64MiB"
//! # Deadline of one request, 1ms to 1h. Default: 30s, like common proxies.
//! timeout = "30s"
//! # CPU budget per request in wasm fuel units (about one per instruction), at least 1.
//! # Default: none (unlimited; metering costs speed and the deadline already bounds requests).
//! fuel = 1_000_000_000
//! # Instances that may run at once on one node, 1 to 10000. Default: 100.
//! max_concurrency = 100
//! # Largest request body, at most 4GiB; larger requests get 413. Default: 10MiB.
//! max_body = "10MiB"
//!
//! # Deny by default: the component can reach only what is listed here.
//! [capabilities]
//! # Hosts for outgoing HTTP: name, name:port, *.domain, IPv4 or [IPv6], with optional port.
//! outbound_http = ["api.example.com", "*.cdn.example.com", "127.0.0.1:8080"]
//! # Key-value buckets the component may open.
//! keyvalue = ["sessions"]
//! # Host environment variables copied into the component at start. Default: none.
//! env_from_host = ["DATABASE_URL"]
//!
//! # Literal environment variables for the component. Default: none.
//! [env]
//! LOG_LEVEL = "info"
//!
//! # Values exposed through wasi:config. Default: none.
//! [config]
//! greeting = "hello"
//! ```
//!
//! Sizes are an integer and a unit: `B`, `kB`, `MB`, `GB`, … (powers of 1000) or `KiB`, `MiB`,
//! `GiB`, … (powers of 1024). Durations are an integer and one of `ns`, `us`, `ms`, `s`, `m`,
//! `h`. Bare numbers are rejected: nobody should have to guess the unit.
//!
//! ```
//! let m = aether_manifest::parse("name = \"x\"\ncomponent = \"x.wasm\"\n[http]\nroutes = [\"/\"]\n", "Aetherfile")?;
//! assert_eq!(m.limits.memory.to_string(), "64MiB");
//!
//! let err = aether_manifest::parse("name = \"x\"\ncomponent = \"x.wasm\"\n[limits]\nmemory = 64\n", "Aetherfile")
//!     .unwrap_err();
//! assert_eq!(err.location(), Some(("Aetherfile".to_string(), 4, 10)));
//! assert!(err.to_string().starts_with("Aetherfile:4:10: "));
//! # Ok::<(), aether_manifest::ManifestError>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod error;
mod locate;
mod model;
mod rules;
mod suggest;
mod units;
mod validate;

use std::path::Path;

pub use error::{ManifestError, SourceError};
pub use model::{
    Capabilities, ComponentSource, Gates, Http, Intent, LatencyTarget, Limits, Manifest, Replicas,
    Rollout, Route, Strategy,
};
pub use units::{ByteSize, Duration, ParseUnitError};

use error::Reporter;
use locate::Doc;

/// Parses and validates an Aetherfile. `file_name` is used in error messages only.
pub fn parse(source: &str, file_name: &str) -> Result<Manifest, ManifestError> {
    let report = Reporter {
        file: file_name,
        source,
    };
    match toml::from_str::<Manifest>(source) {
        Ok(manifest) => {
            let violations = validate::validate(&manifest);
            let doc = Doc::parse(source);
            let mut errors: Vec<(usize, SourceError)> = violations
                .into_iter()
                .enumerate()
                .map(|(i, v)| (i, locate::violation(&report, &doc, v)))
                .collect();
            // Report in the order they appear in the file.
            errors.sort_by_key(|(i, e)| (e.line(), e.column(), *i));
            let mut errors = errors.into_iter().map(|(_, e)| e);
            match errors.next() {
                Some(first) => Err(Reporter::finish(first, errors.collect())),
                None => Ok(manifest),
            }
        }
        Err(err) => {
            let doc = Doc::parse(source);
            Err(ManifestError::Invalid(Box::new(locate::toml_error(
                &report, &doc, &err,
            ))))
        }
    }
}

/// Reads and parses the Aetherfile at `path`; errors name the path as given.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let source = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&source, &path.display().to_string())
}

/// The JSON Schema (draft 2020-12) of the Aetherfile, generated from the Rust types.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Manifest>();
    let mut value = schema.to_value();
    strip_null(&mut value);
    sort_keys(value)
}

/// Rebuilds objects with their keys in sorted order, so the output does not depend on whether
/// some other crate turned on serde_json's `preserve_order`.
fn sort_keys(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// TOML has no null: drop the `null` alternatives schemars adds for `Option` fields.
fn strip_null(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".to_string(), only);
                }
            }
            for key in ["anyOf", "oneOf"] {
                if let Some(Value::Array(alts)) = map.get_mut(key) {
                    alts.retain(|a| a.get("type").and_then(Value::as_str) != Some("null"));
                    if alts.len() == 1 {
                        let only = alts.remove(0);
                        map.remove(key);
                        if let Value::Object(inner) = only {
                            for (k, val) in inner {
                                map.entry(k).or_insert(val);
                            }
                        }
                    }
                }
            }
            if map.get("default") == Some(&Value::Null) {
                map.remove("default");
            }
            for val in map.values_mut() {
                strip_null(val);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null),
        _ => {}
    }
}

impl Manifest {
    /// Deterministic JSON bytes of the manifest (compact, fields in a fixed order, maps sorted,
    /// defaults written out), the form that gets signed.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        #[allow(clippy::expect_used)]
        serde_json::to_vec(self)
            .expect("manifests always serialize: all map keys are strings and there are no floats")
    }

    /// Reads the canonical JSON form back, applying the same rules as [`parse`].
    pub fn from_canonical_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Canonical {
                message: canonical_message(&e),
            })?;
        let violations = validate::validate(&manifest);
        match violations.first() {
            None => Ok(manifest),
            Some(v) => Err(ManifestError::Canonical {
                message: format!("{}: {}", v.path, v.message),
            }),
        }
    }
}

fn canonical_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.split_once(units::HELP_SEP) {
        Some((message, help)) => {
            // serde_json appends " at line L column C" after our help text.
            let (help, at) = match help.rfind(" at line ") {
                Some(i) => (&help[..i], &help[i..]),
                None => (help, ""),
            };
            format!("{message}{at} ({help})")
        }
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key lists used for "belongs in [table]" hints match the types.
    #[test]
    fn sections_match_the_schema() {
        let schema = json_schema();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v["properties"]
                .as_object()
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            k.sort();
            k
        };
        for (section, expected) in suggest::SECTIONS {
            let def = match *section {
                "" => schema.clone(),
                "component" => schema["$defs"]["ComponentSource"]["anyOf"][1].clone(),
                other => {
                    let mut name = other.to_string();
                    name[..1].make_ascii_uppercase();
                    schema["$defs"][name].clone()
                }
            };
            let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
            expected.sort();
            assert_eq!(keys(&def), expected, "section {section:?}");
        }
    }
}
