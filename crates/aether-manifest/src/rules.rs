//! Syntax rules for names, hosts and keys: regular expressions for the schemas, and equivalent
//! hand-written checks (with helpful messages) for the parser.

/// Component name: a DNS label that starts with a letter.
pub(crate) const NAME_PATTERN: &str = "^[a-z]([a-z0-9-]*[a-z0-9])?$";
/// Version: printable ASCII, no spaces.
pub(crate) const VERSION_PATTERN: &str = "^[!-~]+$";
/// Environment variable name.
pub(crate) const ENV_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
/// `wasi:config` key.
pub(crate) const CONFIG_KEY_PATTERN: &str = "^[A-Za-z0-9_.-]+$";
/// Region name such as `ap-southeast`.
pub(crate) const REGION_PATTERN: &str = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$";
/// Node label key such as `tier` or `example.com/gpu`.
pub(crate) const LABEL_KEY_PATTERN: &str = "^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$";
/// Key-value bucket name.
pub(crate) const BUCKET_PATTERN: &str = "^[a-z0-9][a-z0-9_.-]*$";
/// Route path: `/` then printable ASCII except `?` and `#`.
pub(crate) const ROUTE_PATH_PATTERN: &str = "^/[!-\"$->@-~]*$";
/// Route host: lowercase hostname, IPv4 or bracketed IPv6, optional port.
pub(crate) const HOST_PATTERN: &str = r"^([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])(:[0-9]{1,5})?$";
/// Outbound host: like [`HOST_PATTERN`], or `*.` followed by at least two labels.
pub(crate) const HOST_PATTERN_WILDCARD: &str = r"^(\*\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+|[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])(:[0-9]{1,5})?$";

/// A rule violation: what is wrong and how to fix it.
pub(crate) struct Problem {
    pub message: String,
    pub help: String,
}

impl Problem {
    fn new(message: impl Into<String>, help: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            help: help.into(),
        }
    }
}

type Check = Result<(), Problem>;

/// First character of `s` that `ok` rejects.
fn first_bad(s: &str, ok: impl Fn(char) -> bool) -> Option<char> {
    s.chars().find(|c| !ok(*c))
}

fn show(c: char) -> String {
    if c == ' ' {
        "a space".to_string()
    } else if c.is_control() || c.is_whitespace() {
        format!("{:?}", c)
    } else {
        format!("`{c}`")
    }
}

/// Lowercase DNS-label suggestion for a bad name, if one can be made.
fn sanitize_name(s: &str) -> Option<String> {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let start = out.find(|c: char| c.is_ascii_lowercase())?;
    let mut out = out[start..].to_string();
    out.truncate(63);
    let out = out.trim_end_matches('-').to_string();
    (!out.is_empty()).then_some(out)
}

/// Checks a component name against [`NAME_PATTERN`] and the 63-character limit.
pub(crate) fn check_name(s: &str) -> Check {
    const RULE: &str = "names are 1 to 63 characters of lowercase letters, digits and `-`, \
                        starting with a letter and not ending with `-`";
    let help = |base: &str| match sanitize_name(s) {
        Some(fixed) if fixed != s => format!("{base}; for example `name = \"{fixed}\"`"),
        _ => base.to_string(),
    };
    if s.is_empty() {
        return Err(Problem::new("the name is empty", help(RULE)));
    }
    let len = s.chars().count();
    if len > 63 {
        return Err(Problem::new(
            format!("the name is {len} characters long, more than 63"),
            help(RULE),
        ));
    }
    if s.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(Problem::new(
            format!("the name `{s}` contains uppercase letters"),
            help(RULE),
        ));
    }
    if let Some(c) = first_bad(s, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
    }) {
        return Err(Problem::new(
            format!("the name `{s}` contains {}", show(c)),
            help(RULE),
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(Problem::new(
            format!("the name `{s}` does not start with a letter"),
            help(RULE),
        ));
    }
    if s.ends_with('-') {
        return Err(Problem::new(
            format!("the name `{s}` ends with `-`"),
            help(RULE),
        ));
    }
    Ok(())
}

/// Checks a version string against [`VERSION_PATTERN`].
pub(crate) fn check_version(s: &str) -> Check {
    const RULE: &str =
        "a version is 1 to 64 printable ASCII characters without spaces, e.g. \"1.2.0\"";
    if s.is_empty() {
        return Err(Problem::new("the version is empty", RULE));
    }
    if s.len() > 64 {
        return Err(Problem::new(
            "the version is longer than 64 characters",
            RULE,
        ));
    }
    if let Some(c) = first_bad(s, |c| c.is_ascii_graphic()) {
        return Err(Problem::new(
            format!("the version contains {}", show(c)),
            RULE,
        ));
    }
    Ok(())
}

/// Checks an environment variable name against [`ENV_PATTERN`].
pub(crate) fn check_env_name(s: &str) -> Check {
    const RULE: &str = "environment variable names are letters, digits and `_`, not starting with a digit, e.g. `DATABASE_URL`";
    if s.is_empty() {
        return Err(Problem::new("empty environment variable name", RULE));
    }
    if let Some(c) = first_bad(s, |c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Problem::new(
            format!("environment variable name `{s}` contains {}", show(c)),
            RULE,
        ));
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(Problem::new(
            format!("environment variable name `{s}` starts with a digit"),
            RULE,
        ));
    }
    Ok(())
}

/// Checks a config key against [`CONFIG_KEY_PATTERN`].
pub(crate) fn check_config_key(s: &str) -> Check {
    const RULE: &str = "config keys are letters, digits, `_`, `.` and `-`";
    if s.is_empty() {
        return Err(Problem::new("empty config key", RULE));
    }
    if let Some(c) = first_bad(s, |c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Err(Problem::new(
            format!("config key `{s}` contains {}", show(c)),
            RULE,
        ));
    }
    Ok(())
}

/// The architectures a node can run on (those wasmtime's compiler supports), as nodes
/// advertise them in their built-in `arch` label (Rust's `std::env::consts::ARCH`). The JSON
/// Schema lists the same names (`model::ArchName`).
pub(crate) const KNOWN_ARCHES: [&str; 4] = ["aarch64", "riscv64", "s390x", "x86_64"];

/// Checks an architecture name against [`KNOWN_ARCHES`], suggesting the name for a common alias.
pub(crate) fn check_arch(s: &str) -> Check {
    let rule = format!(
        "architectures are named as Rust names them: {}",
        KNOWN_ARCHES.map(|a| format!("\"{a}\"")).join(", ")
    );
    if KNOWN_ARCHES.contains(&s) {
        return Ok(());
    }
    let alias = match s.to_ascii_lowercase().as_str() {
        "arm64" | "armv8" | "aarch_64" => Some("aarch64"),
        "amd64" | "x64" | "x86-64" | "intel64" => Some("x86_64"),
        "riscv" | "riscv64gc" => Some("riscv64"),
        other if KNOWN_ARCHES.contains(&other) => {
            KNOWN_ARCHES.iter().copied().find(|a| *a == other)
        }
        _ => None,
    };
    match alias {
        Some(a) => Err(Problem::new(
            format!("architecture `{s}` is not known by that name; did you mean \"{a}\"?"),
            rule,
        )),
        None => Err(Problem::new(
            format!("architecture `{s}` is not one a node can run on"),
            rule,
        )),
    }
}

/// Checks a region name against [`REGION_PATTERN`].
pub(crate) fn check_region(s: &str) -> Check {
    const RULE: &str =
        "regions are 1 to 63 lowercase letters, digits and `-`, e.g. \"ap-southeast\"";
    if s.is_empty() {
        return Err(Problem::new("empty region name", RULE));
    }
    if s.len() > 63 {
        return Err(Problem::new(
            format!("region `{s}` is longer than 63 characters"),
            RULE,
        ));
    }
    if let Some(c) = first_bad(s, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
    }) {
        return Err(Problem::new(
            format!("region `{s}` contains {}", show(c)),
            RULE,
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(Problem::new(
            format!("region `{s}` starts or ends with `-`"),
            RULE,
        ));
    }
    Ok(())
}

/// Checks a node label key against [`LABEL_KEY_PATTERN`].
pub(crate) fn check_label_key(s: &str) -> Check {
    const RULE: &str = "label keys are letters, digits, `.`, `_`, `/` and `-`, starting and ending with a letter or digit, at most 63 characters";
    if s.is_empty() {
        return Err(Problem::new("empty label key", RULE));
    }
    if s.len() > 63 {
        return Err(Problem::new(
            format!("label key `{s}` is longer than 63 characters"),
            RULE,
        ));
    }
    if let Some(c) = first_bad(s, |c| c.is_ascii_alphanumeric() || "._/-".contains(c)) {
        return Err(Problem::new(
            format!("label key `{s}` contains {}", show(c)),
            RULE,
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !s.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(Problem::new(
            format!("label key `{s}` must start and end with a letter or digit"),
            RULE,
        ));
    }
    Ok(())
}

/// Checks a key-value bucket name against [`BUCKET_PATTERN`].
pub(crate) fn check_bucket(s: &str) -> Check {
    const RULE: &str = "bucket names are 1 to 63 lowercase letters, digits, `_`, `.` and `-`, starting with a letter or digit";
    if s.is_empty() {
        return Err(Problem::new("empty bucket name", RULE));
    }
    if s.len() > 63 {
        return Err(Problem::new(
            format!("bucket name `{s}` is longer than 63 characters"),
            RULE,
        ));
    }
    if let Some(c) = first_bad(s, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c)
    }) {
        return Err(Problem::new(
            format!("bucket name `{s}` contains {}", show(c)),
            RULE,
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err(Problem::new(
            format!("bucket name `{s}` must start with a letter or digit"),
            RULE,
        ));
    }
    Ok(())
}

/// Checks a route path against [`ROUTE_PATH_PATTERN`].
pub(crate) fn check_route_path(s: &str) -> Check {
    if !s.starts_with('/') {
        let fixed = format!("/{}", s.trim_start_matches('/'));
        return Err(Problem::new(
            format!("route path `{s}` does not start with `/`"),
            format!("route paths are absolute: write \"{fixed}\""),
        ));
    }
    if let Some(c) = first_bad(s, |c| c.is_ascii_graphic() && c != '?' && c != '#') {
        return Err(Problem::new(
            format!("route path `{s}` contains {}", show(c)),
            "route paths are printable ASCII without spaces, `?` or `#`; percent-encode other characters",
        ));
    }
    Ok(())
}

/// Checks one DNS label (`api` in `api.example.com`).
fn check_label(label: &str, whole: &str) -> Check {
    const RULE: &str = "host names are dot-separated labels of lowercase letters, digits and `-` (1 to 63 characters each, not starting or ending with `-`)";
    if label.is_empty() {
        return Err(Problem::new(
            format!("host `{whole}` has an empty label"),
            RULE,
        ));
    }
    if label.len() > 63 {
        return Err(Problem::new(
            format!("host `{whole}` has a label longer than 63 characters"),
            RULE,
        ));
    }
    if label.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(Problem::new(
            format!("host `{whole}` contains uppercase letters"),
            format!(
                "host names are case-insensitive; write \"{}\"",
                whole.to_ascii_lowercase()
            ),
        ));
    }
    if let Some(c) = first_bad(label, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
    }) {
        let help = if c == '*' {
            "`*` may only be the whole first label, as in \"*.example.com\"".to_string()
        } else {
            RULE.to_string()
        };
        return Err(Problem::new(
            format!("host `{whole}` contains {}", show(c)),
            help,
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(Problem::new(
            format!("host `{whole}` has a label starting or ending with `-`"),
            RULE,
        ));
    }
    Ok(())
}

/// Checks `host[:port]` where host is a DNS name, an IPv4 address or a bracketed IPv6 address,
/// optionally `*.`-prefixed when `wildcard` is allowed.
pub(crate) fn check_host(s: &str, wildcard: bool) -> Check {
    let examples = if wildcard {
        "e.g. \"api.example.com\", \"api.example.com:8443\", \"*.example.com\" or \"127.0.0.1:8080\""
    } else {
        "e.g. \"example.com\" or \"example.com:8080\""
    };
    if s.is_empty() {
        return Err(Problem::new(
            "empty host",
            format!("write a host name, {examples}"),
        ));
    }
    if let Some((scheme, rest)) = s.split_once("://") {
        let host = rest.split('/').next().unwrap_or(rest);
        return Err(Problem::new(
            format!("host `{s}` includes the scheme `{scheme}://`"),
            format!("list only the host (and port): \"{host}\""),
        ));
    }
    if let Some((host, _)) = s.split_once('/') {
        return Err(Problem::new(
            format!("host `{s}` includes a path"),
            format!("list only the host (and port): \"{host}\""),
        ));
    }
    // Split off the port.
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return Err(Problem::new(
                format!("host `{s}` has `[` without a closing `]`"),
                "write IPv6 addresses in brackets, e.g. \"[::1]:8080\"",
            ));
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(Problem::new(
                format!("`{addr}` in host `{s}` is not an IPv6 address"),
                "write IPv6 addresses in brackets, e.g. \"[::1]:8080\"",
            ));
        }
        if addr.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(Problem::new(
                format!("host `{s}` contains uppercase letters"),
                format!("write \"{}\"", s.to_ascii_lowercase()),
            ));
        }
        match after {
            "" => (None, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => {
                    return Err(Problem::new(
                        format!("unexpected `{after}` after `]` in host `{s}`"),
                        "write IPv6 addresses in brackets, e.g. \"[::1]:8080\"",
                    ));
                }
            },
        }
    } else {
        match s.split_once(':') {
            Some((host, port)) => {
                if port.contains(':') {
                    return Err(Problem::new(
                        format!("host `{s}` has more than one `:`"),
                        "write IPv6 addresses in brackets, e.g. \"[::1]:8080\"",
                    ));
                }
                (Some(host), Some(port))
            }
            None => (Some(s), None),
        }
    };
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.chars().all(|c| c.is_ascii_digit())
            && matches!(port.parse::<u32>(), Ok(1..=65535))
            && port.len() <= 5;
        if !ok {
            return Err(Problem::new(
                format!("port `{port}` in host `{s}` is not a number from 1 to 65535"),
                format!("write the port as a number, {examples}"),
            ));
        }
    }
    let Some(host) = host else {
        return Ok(()); // bracketed IPv6, already checked
    };
    let (wild, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if wild && !wildcard {
        return Err(Problem::new(
            format!("host `{s}` is a wildcard, which is not allowed here"),
            format!("write one host name, {examples}"),
        ));
    }
    if name == "*" || host == "*" {
        return Err(Problem::new(
            format!("host `{s}` would allow every host"),
            "list the hosts the component needs; `*.example.com` allows all subdomains of one domain",
        ));
    }
    if name.len() > 253 {
        return Err(Problem::new(
            format!("host `{s}` is longer than 253 characters"),
            format!("host names are at most 253 characters, {examples}"),
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        check_label(label, s)?;
    }
    if wild && labels.len() < 2 {
        return Err(Problem::new(
            format!("wildcard `{s}` covers a whole top-level domain"),
            "wildcards must name a domain, as in \"*.example.com\"",
        ));
    }
    // All-numeric dotted names must be valid IPv4 addresses.
    if labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit()))
        && name.parse::<std::net::Ipv4Addr>().is_err()
    {
        return Err(Problem::new(
            format!("`{name}` in host `{s}` is not a valid IPv4 address"),
            examples.to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["x", "hello-world", "a1", &"a".repeat(63)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "-a",
            "a-",
            "Hello",
            "a_b",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let p = check_name("My_App")
            .err()
            .map(|p| p.help)
            .unwrap_or_default();
        assert!(p.contains("my-app"), "{p}");
    }

    #[test]
    fn hosts() {
        for ok in [
            "api.example.com",
            "api.example.com:8443",
            "*.example.com",
            "127.0.0.1:8080",
            "localhost",
            "[::1]:8080",
            "[2001:db8::1]",
        ] {
            assert!(check_host(ok, true).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "https://api.example.com",
            "api.example.com/v1",
            "API.example.com",
            "api..example.com",
            "*",
            "*.com",
            "a.*.com",
            "api.example.com:0",
            "api.example.com:70000",
            "api.example.com:",
            "::1",
            "[::1",
            "[zz]",
            "300.1.1.1",
            "-a.com",
            "a_b.com",
        ] {
            assert!(check_host(bad, true).is_err(), "{bad}");
        }
        assert!(check_host("*.example.com", false).is_err());
    }

    #[test]
    fn paths() {
        assert!(check_route_path("/").is_ok());
        assert!(check_route_path("/api/v1").is_ok());
        assert!(check_route_path("api").is_err());
        assert!(check_route_path("/a b").is_err());
        assert!(check_route_path("/a?b").is_err());
    }
}
