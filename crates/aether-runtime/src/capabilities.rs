//! What a component may reach outside itself.

/// Hosts a component may send outbound HTTP requests to.
///
/// Patterns come from the manifest's `capabilities.outbound_http`:
/// `api.example.com` (any port), `api.example.com:8443` (that port only),
/// `*.example.com` (any subdomain, not the apex), `127.0.0.1:8080`.
/// Everything else is denied: the guest sees `HTTP-request-denied`.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone)]
enum HostPattern {
    Exact(String),
    Suffix(String),
    Any,
}

impl OutboundPolicy {
    /// Builds the policy from manifest patterns (already validated there;
    /// anything unparsable here is ignored, which denies it).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Self {
        let rules = patterns
            .iter()
            .filter_map(|p| parse_rule(p.as_ref()))
            .collect();
        Self { rules }
    }

    /// Whether a request to `authority` (`host` or `host:port`) over `https`
    /// or not is allowed.
    pub fn allows(&self, authority: &str, https: bool) -> bool {
        let (host, port) = split_authority(authority, https);
        let host = host.to_ascii_lowercase();
        self.rules.iter().any(|rule| {
            let host_ok = match &rule.host {
                HostPattern::Any => true,
                HostPattern::Exact(h) => *h == host,
                HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            };
            host_ok && rule.port.is_none_or(|p| Some(p) == port)
        })
    }

    /// True when no outbound request is allowed at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn parse_rule(pattern: &str) -> Option<Rule> {
    let pattern = pattern.trim().to_ascii_lowercase();
    let (host, port) = if let Some(rest) = pattern.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        (host.to_string(), port)
    } else {
        match pattern.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse::<u16>().ok()?)),
            None => (pattern.clone(), None),
        }
    };
    let host = match host.as_str() {
        "" => return None,
        "*" => HostPattern::Any,
        h if h.starts_with("*.") => HostPattern::Suffix(h[1..].to_string()),
        h => HostPattern::Exact(h.to_string()),
    };
    Some(Rule { host, port })
}

fn split_authority(authority: &str, https: bool) -> (&str, Option<u16>) {
    let default_port = if https { 443 } else { 80 };
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .or(Some(default_port));
        return (host, port);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()),
        None => (authority, Some(default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::OutboundPolicy;

    #[test]
    fn exact_suffix_and_port_rules() {
        let p = OutboundPolicy::new(&[
            "api.example.com",
            "*.svc.local",
            "127.0.0.1:8080",
            "[::1]:9000",
        ]);
        assert!(p.allows("api.example.com", true));
        assert!(p.allows("API.example.com:8443", true));
        assert!(!p.allows("example.com", true));
        assert!(p.allows("a.svc.local", false));
        assert!(!p.allows("svc.local", false));
        assert!(p.allows("127.0.0.1:8080", false));
        assert!(!p.allows("127.0.0.1:8081", false));
        assert!(!p.allows("127.0.0.1", false));
        assert!(p.allows("[::1]:9000", false));
        assert!(!p.allows("evil.com", false));
        assert!(OutboundPolicy::new::<&str>(&[]).is_empty());
    }
}
