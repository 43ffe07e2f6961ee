//! Rules beyond types: syntax of names and hosts, ranges, duplicates. Each violation names the
//! path of the offending value so that the TOML layer can point at it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::model::{ComponentSource, Manifest, Replicas};
use crate::rules::{self, Problem};
use crate::units::{ByteSize, Duration};

/// One step of a path into the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A path such as `http.routes[1].path`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    fn of(keys: &[&str]) -> Self {
        FieldPath(keys.iter().map(|k| Seg::Key((*k).to_string())).collect())
    }

    fn key(mut self, k: &str) -> Self {
        self.0.push(Seg::Key(k.to_string()));
        self
    }

    fn index(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// Where a violation points: a key itself, or the value under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Key,
    Value,
}

/// A broken rule, located by path.
pub(crate) struct Violation {
    pub path: FieldPath,
    pub target: Target,
    pub message: String,
    pub label: String,
    pub help: Option<String>,
    /// A second place to point at (the first of two duplicates, the other side of a conflict).
    pub also: Option<(FieldPath, Target, String)>,
}

#[derive(Default)]
struct Checker {
    out: Vec<Violation>,
}

impl Checker {
    fn push(
        &mut self,
        path: FieldPath,
        target: Target,
        message: String,
        label: &str,
        help: Option<String>,
    ) {
        self.out.push(Violation {
            path,
            target,
            message,
            label: label.to_string(),
            help,
            also: None,
        });
    }

    fn problem(
        &mut self,
        path: FieldPath,
        target: Target,
        label: &str,
        result: Result<(), Problem>,
    ) {
        if let Err(p) = result {
            self.push(path, target, p.message, label, Some(p.help));
        }
    }

    fn range_size(&mut self, path: FieldPath, value: ByteSize, min: ByteSize, max: ByteSize) {
        if value < min || value > max {
            let (label, what) = if value < min {
                (format!("less than {min}"), "less")
            } else {
                (format!("more than {max}"), "more")
            };
            self.push(
                path.clone(),
                Target::Value,
                format!("`{path}` is {value}, {what} than allowed"),
                &label,
                Some(format!("`{path}` must be between {min} and {max}")),
            );
        }
    }

    fn range_duration(&mut self, path: FieldPath, value: Duration, min: Duration, max: Duration) {
        if value < min || value > max {
            let (label, what) = if value < min {
                (format!("shorter than {min}"), "shorter")
            } else {
                (format!("longer than {max}"), "longer")
            };
            self.push(
                path.clone(),
                Target::Value,
                format!("`{path}` is {value}, {what} than allowed"),
                &label,
                Some(format!("`{path}` must be between {min} and {max}")),
            );
        }
    }

    fn range_float(&mut self, path: FieldPath, value: f64, min: f64, max: f64) {
        if !(min..=max).contains(&value) {
            self.push(
                path.clone(),
                Target::Value,
                format!("`{path}` is {value}, out of range"),
                &format!("not between {min} and {max}"),
                Some(format!("`{path}` must be between {min} and {max}")),
            );
        }
    }

    fn range_int(&mut self, path: FieldPath, value: u64, min: u64, max: u64, help: Option<&str>) {
        if value < min || value > max {
            let label = if value < min {
                format!("less than {min}")
            } else {
                format!("more than {max}")
            };
            let mut text = format!("`{path}` must be between {min} and {max}");
            if let Some(h) = help {
                text.push_str("; ");
                text.push_str(h);
            }
            self.push(
                path.clone(),
                Target::Value,
                format!("`{path}` is {value}, out of range"),
                &label,
                Some(text),
            );
        }
    }

    /// Reports every repeated item of a list, pointing at the repeat and at the first one.
    fn unique<'a>(
        &mut self,
        path: &FieldPath,
        items: impl IntoIterator<Item = &'a str>,
        what: &str,
    ) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, item) in items.into_iter().enumerate() {
            if let Some(&first) = seen.get(item) {
                self.out.push(Violation {
                    path: path.clone().index(i),
                    target: Target::Value,
                    message: format!("duplicate {what} `{item}` in `{path}`"),
                    label: "duplicate".to_string(),
                    help: Some(format!("remove one of the two `{item}` entries")),
                    also: Some((
                        path.clone().index(first),
                        Target::Value,
                        "first listed here".to_string(),
                    )),
                });
            } else {
                seen.insert(item, i);
            }
        }
    }

    /// Checks the keys of a map.
    fn keys(
        &mut self,
        path: &FieldPath,
        map: &BTreeMap<String, String>,
        check: fn(&str) -> Result<(), Problem>,
    ) {
        for key in map.keys() {
            self.problem(
                path.clone().key(key),
                Target::Key,
                "invalid key",
                check(key),
            );
        }
    }
}

fn not_blank(path: FieldPath, value: &str, what: &str, c: &mut Checker) {
    if value.trim().is_empty() {
        c.push(
            path.clone(),
            Target::Value,
            format!("`{path}` is empty"),
            "empty",
            Some(format!("give {what}, or remove the key")),
        );
    }
}

/// Checks every rule; returns all violations, in field order.
pub(crate) fn validate(m: &Manifest) -> Vec<Violation> {
    let mut c = Checker::default();

    c.problem(
        FieldPath::of(&["name"]),
        Target::Value,
        "invalid name",
        rules::check_name(&m.name),
    );
    if let Some(v) = &m.version {
        c.problem(
            FieldPath::of(&["version"]),
            Target::Value,
            "invalid version",
            rules::check_version(v),
        );
    }

    match &m.component {
        ComponentSource::Path(p) => {
            not_blank(
                FieldPath::of(&["component"]),
                &p.to_string_lossy(),
                "the path of a .wasm component",
                &mut c,
            );
        }
        ComponentSource::Build {
            path,
            build,
            workdir,
        } => {
            not_blank(
                FieldPath::of(&["component", "path"]),
                &path.to_string_lossy(),
                "the path of the .wasm component",
                &mut c,
            );
            if let Some(b) = build {
                not_blank(
                    FieldPath::of(&["component", "build"]),
                    b,
                    "a shell command",
                    &mut c,
                );
            }
            if let Some(w) = workdir {
                not_blank(
                    FieldPath::of(&["component", "workdir"]),
                    &w.to_string_lossy(),
                    "a directory",
                    &mut c,
                );
            }
        }
    }

    // HTTP routes.
    let routes = FieldPath::of(&["http", "routes"]);
    let mut seen: HashMap<(&str, Option<&str>), usize> = HashMap::new();
    for (i, r) in m.http.routes.iter().enumerate() {
        let at = routes.clone().index(i);
        c.problem(
            at.clone().key("path"),
            Target::Value,
            "invalid route path",
            rules::check_route_path(&r.path),
        );
        if let Some(h) = &r.host {
            c.problem(
                at.clone().key("host"),
                Target::Value,
                "invalid host",
                rules::check_host(h, false),
            );
        }
        let key = (r.path.as_str(), r.host.as_deref());
        if let Some(&first) = seen.get(&key) {
            let shown = match &r.host {
                Some(h) => format!("`{}` on host `{h}`", r.path),
                None => format!("`{}`", r.path),
            };
            c.out.push(Violation {
                path: at,
                target: Target::Value,
                message: format!("duplicate route {shown}"),
                label: "duplicate route".to_string(),
                help: Some(
                    "each path (and host) may be routed only once; remove one of them".to_string(),
                ),
                also: Some((
                    routes.clone().index(first),
                    Target::Value,
                    "first routed here".to_string(),
                )),
            });
        } else {
            seen.insert(key, i);
        }
    }

    // Intent.
    let intent = FieldPath::of(&["intent"]);
    let replicas = intent.clone().key("replicas");
    match m.intent.replicas {
        Replicas::Fixed(0) => c.push(
            replicas.clone(),
            Target::Value,
            "`intent.replicas` is 0".to_string(),
            "at least 1",
            Some("a fixed number of replicas is between 1 and 1000; to allow scaling to zero write `replicas = { min = 0, max = 5 }`".to_string()),
        ),
        Replicas::Fixed(n) => c.range_int(replicas.clone(), n.into(), 1, 1000, None),
        Replicas::Range { min, max } => {
            c.range_int(replicas.clone().key("max"), max.into(), 1, 1000, None);
            if min > max {
                c.out.push(Violation {
                    path: replicas.clone().key("min"),
                    target: Target::Value,
                    message: format!("`intent.replicas.min` ({min}) is greater than `intent.replicas.max` ({max})"),
                    label: format!("greater than max = {max}"),
                    help: Some("min is the fewest replicas and max the most; swap them or raise max".to_string()),
                    also: Some((replicas.clone().key("max"), Target::Value, "max is here".to_string())),
                });
            }
        }
    }
    let regions = intent.clone().key("regions");
    for (i, r) in m.intent.regions.iter().enumerate() {
        c.problem(
            regions.clone().index(i),
            Target::Value,
            "invalid region",
            rules::check_region(r),
        );
    }
    c.unique(
        &regions,
        m.intent.regions.iter().map(String::as_str),
        "region",
    );
    let arch = intent.clone().key("arch");
    for (i, a) in m.intent.arch.iter().enumerate() {
        c.problem(
            arch.clone().index(i),
            Target::Value,
            "unknown architecture",
            rules::check_arch(a),
        );
    }
    c.unique(
        &arch,
        m.intent.arch.iter().map(String::as_str),
        "architecture",
    );
    if let Some(l) = &m.intent.latency {
        let at = intent.clone().key("latency");
        if l.from.is_empty() {
            c.push(
                at.clone().key("from"),
                Target::Value,
                "`intent.latency.from` is empty".to_string(),
                "empty region",
                Some(
                    "name the region the users are in, e.g. `from = \"ap-southeast\"`".to_string(),
                ),
            );
        } else {
            c.problem(
                at.clone().key("from"),
                Target::Value,
                "invalid region",
                rules::check_region(&l.from),
            );
        }
        c.range_duration(
            at.key("p99"),
            l.p99,
            Duration::from_millis(1),
            Duration::from_secs(60),
        );
    }
    if let Some(mem) = m.intent.memory {
        c.range_size(
            intent.clone().key("memory"),
            mem,
            ByteSize::kib(64),
            ByteSize::gib(1024),
        );
    }
    c.keys(
        &intent.clone().key("labels"),
        &m.intent.labels,
        rules::check_label_key,
    );
    if let Some(t) = m.intent.idle_timeout {
        c.range_duration(
            intent.clone().key("idle_timeout"),
            t,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        );
    }

    // Limits.
    let limits = FieldPath::of(&["limits"]);
    c.range_size(
        limits.clone().key("memory"),
        m.limits.memory,
        ByteSize::kib(64),
        ByteSize::gib(4),
    );
    c.range_duration(
        limits.clone().key("timeout"),
        m.limits.timeout,
        Duration::from_millis(1),
        Duration::from_secs(3600),
    );
    if m.limits.fuel == Some(0) {
        c.push(
            limits.clone().key("fuel"),
            Target::Value,
            "`limits.fuel` is 0, so no request could run".to_string(),
            "must be at least 1",
            Some("give a budget of at least 1, or remove `fuel` for no CPU budget (the deadline still applies)".to_string()),
        );
    }
    c.range_int(
        limits.clone().key("max_concurrency"),
        m.limits.max_concurrency.into(),
        1,
        10_000,
        None,
    );
    c.range_size(
        limits.clone().key("max_body"),
        m.limits.max_body,
        ByteSize(0),
        ByteSize::gib(4),
    );

    // Capabilities.
    let caps = FieldPath::of(&["capabilities"]);
    let outbound = caps.clone().key("outbound_http");
    for (i, h) in m.capabilities.outbound_http.iter().enumerate() {
        c.problem(
            outbound.clone().index(i),
            Target::Value,
            "invalid host pattern",
            rules::check_host(h, true),
        );
    }
    c.unique(
        &outbound,
        m.capabilities.outbound_http.iter().map(String::as_str),
        "host",
    );
    let kv = caps.clone().key("keyvalue");
    for (i, b) in m.capabilities.keyvalue.iter().enumerate() {
        c.problem(
            kv.clone().index(i),
            Target::Value,
            "invalid bucket name",
            rules::check_bucket(b),
        );
    }
    c.unique(
        &kv,
        m.capabilities.keyvalue.iter().map(String::as_str),
        "bucket",
    );
    let from_host = caps.key("env_from_host");
    for (i, name) in m.capabilities.env_from_host.iter().enumerate() {
        c.problem(
            from_host.clone().index(i),
            Target::Value,
            "invalid variable name",
            rules::check_env_name(name),
        );
        if m.env.contains_key(name) {
            c.out.push(Violation {
                path: from_host.clone().index(i),
                target: Target::Value,
                message: format!("`{name}` is both set in [env] and copied from the host"),
                label: "copied from the host".to_string(),
                help: Some(format!(
                    "keep one: remove `{name}` from [env] or from `env_from_host`"
                )),
                also: Some((
                    FieldPath::of(&["env"]).key(name),
                    Target::Key,
                    "set here".to_string(),
                )),
            });
        }
    }
    c.unique(
        &from_host,
        m.capabilities.env_from_host.iter().map(String::as_str),
        "variable",
    );

    rollout(&m.rollout, &mut c);

    c.keys(&FieldPath::of(&["env"]), &m.env, rules::check_env_name);
    c.keys(
        &FieldPath::of(&["config"]),
        &m.config,
        rules::check_config_key,
    );

    c.out
}

/// The `[rollout]` section: canary steps that grow, an interval and gates in range.
fn rollout(r: &crate::model::Rollout, c: &mut Checker) {
    let path = FieldPath::of(&["rollout"]);
    let steps = path.clone().key("steps");
    if r.steps.is_empty() || r.steps.len() > 20 {
        c.push(
            steps.clone(),
            Target::Value,
            format!("`rollout.steps` has {} steps", r.steps.len()),
            "between 1 and 20 steps",
            Some("give the canary's shares in percent, e.g. `steps = [5, 25, 100]`".to_string()),
        );
    }
    for (i, &step) in r.steps.iter().enumerate() {
        c.range_int(
            steps.clone().index(i),
            step.into(),
            1,
            100,
            Some("each step is a percentage of requests"),
        );
        if i > 0 && step <= r.steps[i - 1] {
            c.push(
                steps.clone().index(i),
                Target::Value,
                format!(
                    "`rollout.steps` must grow: {step} follows {}",
                    r.steps[i - 1]
                ),
                "not more than the step before",
                Some("list the shares in increasing order, e.g. `[5, 25, 100]`".to_string()),
            );
        }
    }
    c.range_duration(
        path.clone().key("interval"),
        r.interval,
        Duration::from_secs(1),
        Duration::from_secs(86_400),
    );
    let gates = path.key("gates");
    c.range_float(
        gates.clone().key("max_error_increase"),
        r.gates.max_error_increase,
        0.0,
        100.0,
    );
    c.range_float(
        gates.clone().key("max_fault_increase"),
        r.gates.max_fault_increase,
        0.0,
        100.0,
    );
    c.range_float(
        gates.clone().key("max_p99_ratio"),
        r.gates.max_p99_ratio,
        1.0,
        1000.0,
    );
    c.range_int(
        gates.key("min_requests"),
        r.gates.min_requests.into(),
        1,
        1_000_000,
        None,
    );
}
