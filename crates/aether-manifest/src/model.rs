//! The typed manifest. Doc comments here become the descriptions in the JSON Schema.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::rules;
use crate::units::{ByteSize, Duration};

/// An Aetherfile: one component, how to build it, where it answers HTTP, where and how much of it
/// should run, what it may use, and what it may reach.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Aetherfile")]
pub struct Manifest {
    /// Name of the component, unique in the lattice: 1 to 63 characters of `a-z`, `0-9` and `-`,
    /// starting with a letter and not ending with `-`. Required. It is used in DNS-like places
    /// (routes, logs, metrics labels), hence the DNS-label syntax.
    #[schemars(length(min = 1, max = 63), pattern(rules::NAME_PATTERN))]
    pub name: String,

    /// Free-form version of the component, e.g. `"1.2.0"`; shown by `alkahest status` and in logs.
    /// Optional, no default: deployments are identified by the component's hash, not this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(rules::VERSION_PATTERN))]
    pub version: Option<String>,

    /// The WebAssembly component to run. Required. Either a path to a `.wasm` component
    /// (`component = "app.wasm"`), or a `[component]` table with the `path` the build produces and
    /// the `build` command that produces it. Relative paths are relative to the Aetherfile.
    pub component: ComponentSource,

    /// Incoming HTTP: which paths (and optionally hosts) are routed to this component.
    /// Default: no routes, so the component is not reachable over HTTP.
    #[serde(default)]
    pub http: Http,

    /// Placement and scaling intent: how many replicas, in which regions, with what latency.
    /// Default: one replica, anywhere in the lattice.
    #[serde(default)]
    pub intent: Intent,

    /// Per-instance resource limits enforced by the runtime. Defaults are safe for small HTTP
    /// handlers: 64MiB of memory, a 30s deadline, no fuel budget, 100 concurrent instances,
    /// 10MiB request bodies.
    #[serde(default)]
    pub limits: Limits,

    /// What the component may use beyond its own memory. Default: nothing (deny by default):
    /// no outbound HTTP, no key-value buckets, no host environment variables.
    #[serde(default)]
    pub capabilities: Capabilities,

    /// Environment variables given to the component (`wasi:cli/environment`), as literal values.
    /// Names are `[A-Za-z_][A-Za-z0-9_]*`. Default: none. Use `capabilities.env_from_host` to copy
    /// values from the host instead of writing them here.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": rules::ENV_PATTERN }))]
    pub env: BTreeMap<String, String>,

    /// Configuration values exposed through `wasi:config`. Keys are `[A-Za-z0-9_.-]+`.
    /// Default: none.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": rules::CONFIG_KEY_PATTERN }))]
    pub config: BTreeMap<String, String>,

    /// How a new version of the component replaces the one serving: all at once, or as a canary
    /// whose share of requests grows in steps judged by health gates. Default: all at once.
    /// `alkahest deploy --strategy`, `--steps` and `--interval` override it for one rollout.
    #[serde(default, skip_serializing_if = "Rollout::is_default")]
    pub rollout: Rollout,
}

/// How a new version replaces the one serving.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Rollout {
    /// `"all-at-once"`: every node switches to the new version once every node has compiled it.
    /// `"canary"`: the new version first serves a share of requests that grows by `steps`, each
    /// held for `interval` and judged by the `gates`; a failing gate rolls back by itself.
    /// Default: `"all-at-once"`. A first deploy is always all at once (nothing to compare with).
    pub strategy: Strategy,

    /// Canary only: the percentages of requests the new version serves, in increasing order,
    /// each between 1 and 100, at most 20 of them. Reaching 100 makes it the serving version (a
    /// last step of 100 is implied when missing). Default: `[5, 25, 100]`.
    #[schemars(inner(range(min = 1, max = 100)), length(min = 1, max = 20))]
    pub steps: Vec<u32>,

    /// Canary only: how long each step below 100 lasts before its gate passes, between 1s and
    /// 24h. Default: 30s, long enough for a few hundred requests at modest traffic.
    pub interval: Duration,

    /// Canary only: what the new version must not do worse than the old one, judged over the
    /// requests both served during the canary.
    pub gates: Gates,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            strategy: Strategy::AllAtOnce,
            steps: vec![5, 25, 100],
            interval: Duration::from_secs(30),
            gates: Gates::default(),
        }
    }
}

impl Rollout {
    /// Whether every field has its default (then the canonical form leaves the section out).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// How traffic moves to a new version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Every node switches once every node has compiled the new version.
    #[default]
    AllAtOnce,
    /// The new version's share of requests grows in steps, each judged by health gates.
    Canary,
}

/// The health gates of a canary: the new version against the old one, over the same time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    /// How much higher the new version's share of 5xx responses may be than the old one's, in
    /// percentage points, between 0 and 100. Judged on a 95% confidence bound, so a single
    /// unlucky error among few requests does not fail the gate. Default: 1.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub max_error_increase: f64,

    /// How much higher the new version's share of instance faults (traps, deadline, CPU budget,
    /// memory limit) may be than the old one's, in percentage points, between 0 and 100, judged
    /// like `max_error_increase`. Default: 1.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub max_fault_increase: f64,

    /// The new version's 99th-percentile latency may be at most this multiple of the old one's,
    /// plus 5ms; between 1 and 1000. Judged once the new version has served 100 requests.
    /// Default: 2.
    #[schemars(range(min = 1.0, max = 1000.0))]
    pub max_p99_ratio: f64,

    /// Requests the new version must have served before a gate judges it, between 1 and
    /// 1000000. A step that ends with fewer passes unjudged, and the rollout says so.
    /// Default: 20.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub min_requests: u32,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            max_error_increase: 1.0,
            max_fault_increase: 1.0,
            max_p99_ratio: 2.0,
            min_requests: 20,
        }
    }
}

/// Where the component comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum ComponentSource {
    /// A ready-made component: `component = "app.wasm"`.
    Path(#[schemars(length(min = 1))] PathBuf),
    /// A component produced by a build step: `[component]` with `path` and optional `build` and
    /// `workdir`.
    Build {
        /// Path of the `.wasm` component (what the build writes). Required.
        #[schemars(length(min = 1))]
        path: PathBuf,
        /// Shell command that builds the component, run by `alkahest build` (and by `alkahest up`
        /// before starting). Optional: without it the file at `path` is used as it is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(min = 1))]
        build: Option<String>,
        /// Directory the build command runs in. Default: the Aetherfile's directory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(min = 1))]
        workdir: Option<PathBuf>,
    },
}

impl ComponentSource {
    /// Path of the component file, whichever form was used.
    pub fn path(&self) -> &Path {
        match self {
            ComponentSource::Path(path) | ComponentSource::Build { path, .. } => path,
        }
    }

    /// The build command, if there is one.
    pub fn build_command(&self) -> Option<&str> {
        match self {
            ComponentSource::Path(_) => None,
            ComponentSource::Build { build, .. } => build.as_deref(),
        }
    }

    /// Directory the build command runs in, if one was given.
    pub fn workdir(&self) -> Option<&Path> {
        match self {
            ComponentSource::Path(_) => None,
            ComponentSource::Build { workdir, .. } => workdir.as_deref(),
        }
    }
}

/// `[component]` table form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentTable {
    path: PathBuf,
    #[serde(default)]
    build: Option<String>,
    #[serde(default)]
    workdir: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for ComponentSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ComponentSource;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a path to a .wasm component (component = \"app.wasm\") or a table \
                     with `path` and optional `build` and `workdir`",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ComponentSource, E> {
                Ok(ComponentSource::Path(PathBuf::from(v)))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ComponentSource, A::Error> {
                let t = ComponentTable::deserialize(MapAccessDeserializer::new(map))?;
                Ok(ComponentSource::Build {
                    path: t.path,
                    build: t.build,
                    workdir: t.workdir,
                })
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Incoming HTTP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Routes served by this component, each a path prefix (`"/api"`) or a table
    /// `{ path = "/api", host = "example.com" }`. Paths start with `/`; the same path and host may
    /// appear only once. Default: none, so the component gets no HTTP traffic.
    #[serde(default)]
    pub routes: Vec<Route>,

    /// Whether the component gets a virtual address: a stable IPv4 address, the same on every
    /// node, that any process in a node's cgroup reaches on port 80 with no proxy (the kernel
    /// connects it to that node's listener for the component, which serves every request there
    /// whatever its path). Needs the node's eBPF data plane. Default: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub virtual_address: bool,
}

/// One HTTP route: a path prefix, optionally limited to one `Host`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Route {
    /// Path prefix, starting with `/`.
    pub path: String,
    /// Host the route answers for (lowercase hostname, optional `:port`); `None` means any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Route {
    /// A route for `path` on any host.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            host: None,
        }
    }
}

// Table form of a route, for deserialization and the schema.
/// A route limited to one host: `{ path = "/api", host = "api.example.com" }`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RouteTable {
    /// Path prefix; must start with `/` and contain no spaces, `?` or `#`.
    #[schemars(pattern(rules::ROUTE_PATH_PATTERN))]
    path: String,
    /// Only requests whose `Host` is this lowercase hostname (optionally with `:port`) match.
    /// Default: any host.
    #[serde(default)]
    #[schemars(pattern(rules::HOST_PATTERN))]
    host: Option<String>,
}

// Schema only: the two ways to write a route.
/// A route: a path prefix (`"/api"`), or a table with the path and the host it is limited to.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum RouteSchema {
    /// A path prefix on any host, e.g. `"/api"`.
    Path(#[schemars(pattern(rules::ROUTE_PATH_PATTERN))] String),
    /// A path prefix limited to one host.
    Table(RouteTable),
}

impl JsonSchema for Route {
    fn schema_name() -> Cow<'static, str> {
        "Route".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        RouteSchema::json_schema(generator)
    }
}

impl<'de> Deserialize<'de> for Route {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Route;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a route path such as \"/api\" or a table { path = \"/api\", host = \"example.com\" }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Route, E> {
                Ok(Route::new(v))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Route, A::Error> {
                let t = RouteTable::deserialize(MapAccessDeserializer::new(map))?;
                Ok(Route {
                    path: t.path,
                    host: t.host,
                })
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Placement and scaling intent; the scheduler places replicas to satisfy it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Intent {
    /// How many instances to keep placed: a number (`replicas = 3`), or a range
    /// (`replicas = { min = 0, max = 5 }`) scaled on load, where `min = 0` allows scaling to zero.
    /// Default: 1, the smallest number that serves traffic.
    pub replicas: Replicas,

    /// Regions (node sectors such as `"ap-southeast"`) the replicas may be placed in.
    /// Default: empty, meaning any region.
    #[schemars(inner(pattern(rules::REGION_PATTERN)), extend("uniqueItems" = true))]
    pub regions: Vec<String>,

    /// A latency target: keep p99 latency for users in region `from` under `p99`, which places at
    /// least one replica close enough to them. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyTarget>,

    /// Memory the scheduler reserves per replica on a node when placing it (between 64KiB and
    /// 1TiB). Default: none, meaning the instance limit `limits.memory` is used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,

    /// Node labels a node must carry (with these values) to host a replica, e.g.
    /// `{ gpu = "none", tier = "edge" }`. Default: none, any node.
    #[schemars(extend("propertyNames" = { "pattern": rules::LABEL_KEY_PATTERN }))]
    pub labels: BTreeMap<String, String>,

    /// CPU architectures a node must run on to host a replica, as Rust names them (`"aarch64"`,
    /// `"x86_64"`, `"riscv64"`, …): one name or a list. Every node advertises its own as the
    /// built-in label `arch`. Default: none, any architecture: the component is portable
    /// WebAssembly, compiled on each node for that node; ask for one only when the component
    /// must run on that hardware.
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(with = "Arch")]
    pub arch: Vec<String>,

    /// Spread replicas across as many regions as possible instead of packing them onto the best
    /// nodes. Default: false, because packing near users keeps latency low; turn it on for
    /// availability when a whole region may fail.
    pub spread: bool,

    /// Serve only from nodes members can dial directly (not behind NAT): for a component that
    /// must answer from a stable, reachable address. Nodes learn their reachability and
    /// advertise it as the label `reachability`; this is the same as requiring the label
    /// `reachability = "direct"`. Default: false, any node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reachable: bool,

    /// With `replicas.min = 0`, how long an instance may stay idle before it is scaled to zero
    /// (between 1s and 24h). Default: none, the node's default applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

impl Default for Intent {
    fn default() -> Self {
        Self {
            replicas: Replicas::Fixed(1),
            regions: Vec::new(),
            latency: None,
            memory: None,
            labels: BTreeMap::new(),
            arch: Vec::new(),
            spread: false,
            reachable: false,
            idle_timeout: None,
        }
    }
}

// Schema only: the two ways to write `arch`.
/// A CPU architecture, or a list of them (any one will do).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum Arch {
    /// One architecture, e.g. `"aarch64"`.
    One(ArchName),
    /// Any of these architectures.
    Many(#[schemars(extend("uniqueItems" = true))] Vec<ArchName>),
}

// Schema only: the architectures of `rules::KNOWN_ARCHES`.
/// An architecture a node can run on, as Rust names it.
#[derive(JsonSchema)]
#[allow(dead_code)]
enum ArchName {
    #[serde(rename = "aarch64")]
    Aarch64,
    #[serde(rename = "riscv64")]
    Riscv64,
    #[serde(rename = "s390x")]
    S390x,
    #[serde(rename = "x86_64")]
    X86_64,
}

/// Reads a string or a list of strings into a list.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(deserializer) {
        Ok(OneOrMany::One(s)) => Ok(vec![s]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(de::Error::custom(
            "expected an architecture name or a list of them, e.g. \"aarch64\" or [\"x86_64\", \"aarch64\"]",
        )),
    }
}

/// How many replicas to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Replicas {
    /// Exactly this many, between 1 and 1000.
    Fixed(u32),
    /// Between `min` and `max` (0 ≤ min ≤ max, 1 ≤ max ≤ 1000), scaled on load.
    Range {
        /// Fewest replicas; 0 allows scaling to zero.
        min: u32,
        /// Most replicas.
        max: u32,
    },
}

// Schema only: the two ways to write `replicas`.
/// How many replicas to run: a fixed number, or a `{ min, max }` range scaled on load.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ReplicasSchema {
    /// Exactly this many, between 1 and 1000.
    Fixed(#[schemars(range(min = 1, max = 1000))] u32),
    /// Between `min` and `max`, scaled on load.
    Range(ReplicaRange),
}

impl JsonSchema for Replicas {
    fn schema_name() -> Cow<'static, str> {
        "Replicas".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        ReplicasSchema::json_schema(generator)
    }
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas::Fixed(1)
    }
}

impl Replicas {
    /// The fewest replicas that may run.
    pub fn min(&self) -> u32 {
        match *self {
            Replicas::Fixed(n) => n,
            Replicas::Range { min, .. } => min,
        }
    }

    /// The most replicas that may run.
    pub fn max(&self) -> u32 {
        match *self {
            Replicas::Fixed(n) => n,
            Replicas::Range { max, .. } => max,
        }
    }
}

fn default_min_replicas() -> u32 {
    1
}

/// A range of replicas, scaled on load: `{ min = 0, max = 5 }`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReplicaRange {
    /// Fewest replicas, between 0 and `max`; 0 allows scaling to zero when idle. Default: 1.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(max = 1000))]
    min: u32,
    /// Most replicas, between 1 and 1000. Required.
    #[schemars(range(min = 1, max = 1000))]
    max: u32,
}

impl<'de> Deserialize<'de> for Replicas {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Replicas;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of replicas (replicas = 3) or a range (replicas = { min = 0, max = 5 })")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Replicas, E> {
                u32::try_from(v).map(Replicas::Fixed).map_err(|_| {
                    crate::units::error_with_help(
                        format_args!("replicas must be between 1 and 1000, found {v}"),
                        "write a whole number such as `replicas = 3`",
                    )
                })
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Replicas, E> {
                u32::try_from(v).map(Replicas::Fixed).map_err(|_| {
                    crate::units::error_with_help(
                        format_args!("replicas must be between 1 and 1000, found {v}"),
                        "write a whole number such as `replicas = 3`",
                    )
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Replicas, A::Error> {
                let r = ReplicaRange::deserialize(MapAccessDeserializer::new(map))?;
                Ok(Replicas::Range {
                    min: r.min,
                    max: r.max,
                })
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A latency target for users in one region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencyTarget {
    /// Region the users are in, e.g. `"ap-southeast"`. Required.
    #[schemars(pattern(rules::REGION_PATTERN))]
    pub from: String,
    /// The 99th-percentile latency to stay under, between 1ms and 60s, e.g. `"30ms"`. Required.
    pub p99: Duration,
}

/// Per-instance limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest linear memory one instance may grow to, between 64KiB (one wasm page) and 4GiB
    /// (the 32-bit address space). Default: 64MiB, enough for typical handlers while letting
    /// a node pack many instances.
    pub memory: ByteSize,

    /// Deadline for one request, between 1ms and 1h; the instance is interrupted when it passes.
    /// Default: 30s, like common HTTP proxies, so stuck requests do not pile up.
    pub timeout: Duration,

    /// CPU budget per request in wasm fuel units (about one per instruction); must be at least 1.
    /// Default: none, unlimited, because fuel metering costs some speed and the deadline
    /// already bounds runaway requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub fuel: Option<u64>,

    /// Instances of this component that may run at once on one node, between 1 and 10000.
    /// Default: 100, which bounds memory at `100 × limits.memory` per node.
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrency: u32,

    /// Largest request body accepted, at most 4GiB; larger requests get `413`. Default: 10MiB,
    /// so a client cannot make an instance buffer unbounded input.
    pub max_body: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: ByteSize::mib(64),
            timeout: Duration::from_secs(30),
            fuel: None,
            max_concurrency: 100,
            max_body: ByteSize::mib(10),
        }
    }
}

/// What the component may use. Everything not listed is denied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Capabilities {
    /// Hosts the component may send HTTP requests to: `"api.example.com"`,
    /// `"api.example.com:8443"`, `"*.example.com"` (any subdomain), `"127.0.0.1:8080"`,
    /// `"[::1]:8080"`. Without a port, any port. No scheme and no path. Default: none.
    #[schemars(inner(pattern(rules::HOST_PATTERN_WILDCARD)), extend("uniqueItems" = true))]
    pub outbound_http: Vec<String>,

    /// Key-value buckets (`wasi:keyvalue`) the component may open, e.g. `"sessions"`.
    /// Names are `[a-z0-9][a-z0-9_.-]*`, at most 63 characters. Default: none.
    #[schemars(inner(pattern(rules::BUCKET_PATTERN), length(max = 63)), extend("uniqueItems" = true))]
    pub keyvalue: Vec<String>,

    /// Names of host environment variables copied into the component's environment when it
    /// starts, e.g. `"DATABASE_URL"`. Default: none, so secrets on the host stay there.
    #[schemars(inner(pattern(rules::ENV_PATTERN)), extend("uniqueItems" = true))]
    pub env_from_host: Vec<String>,
}
