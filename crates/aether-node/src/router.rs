//! Routing a request's host and path to a deployment.

use std::sync::Arc;

use aether_manifest::Route;

/// An immutable routing table, swapped whole on every deploy.
///
/// A route matches when its host (if any) equals the request's host, ignoring
/// case and port, and its path is a prefix of the request path that ends at a
/// segment boundary (`/api` matches `/api` and `/api/x`, not `/apix`). Among
/// matches, a route with a host beats one without, then the longest path wins.
#[derive(Debug)]
pub struct RouteTable<T> {
    entries: Vec<Entry<T>>,
}

#[derive(Debug)]
struct Entry<T> {
    host: Option<String>,
    path: String,
    target: Arc<T>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

/// Two deployments claim the same host and path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "route `{route}` is already served by `{owner}`; change the route or remove `{owner}` first"
)]
pub struct RouteConflict {
    /// The route, as `host/path` or `/path`.
    pub route: String,
    /// The deployment that has it.
    pub owner: String,
}

/// The written form of a route: `/path` or `host/path`.
pub fn route_text(route: &Route) -> String {
    match &route.host {
        Some(h) => format!("{h}{}", route.path),
        None => route.path.clone(),
    }
}

fn normalise_path(path: &str) -> String {
    if path.len() > 1 {
        path.trim_end_matches('/').to_string()
    } else {
        path.to_string()
    }
}

impl<T> RouteTable<T> {
    /// A table built from `(owner name, routes, target)` triples; fails on
    /// the first route two owners share.
    pub fn build<'a, I>(deployments: I) -> Result<Self, RouteConflict>
    where
        I: IntoIterator<Item = (&'a str, &'a [Route], Arc<T>)>,
        T: 'a,
    {
        let mut entries: Vec<(Entry<T>, String)> = Vec::new();
        for (owner, routes, target) in deployments {
            for route in routes {
                let host = route
                    .host
                    .as_ref()
                    .map(|h| strip_port(h).to_ascii_lowercase());
                let path = normalise_path(&route.path);
                if let Some((_, other)) = entries
                    .iter()
                    .find(|(e, o)| e.host == host && e.path == path && o != owner)
                {
                    return Err(RouteConflict {
                        route: route_text(route),
                        owner: other.clone(),
                    });
                }
                entries.push((
                    Entry {
                        host,
                        path,
                        target: target.clone(),
                    },
                    owner.to_string(),
                ));
            }
        }
        let mut entries: Vec<Entry<T>> = entries.into_iter().map(|(e, _)| e).collect();
        entries.sort_by(|a, b| {
            b.host
                .is_some()
                .cmp(&a.host.is_some())
                .then(b.path.len().cmp(&a.path.len()))
        });
        Ok(Self { entries })
    }

    /// The deployment serving `host` (from the `Host` header or URI) and `path`.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&Arc<T>> {
        let host = host.map(strip_port);
        self.entries
            .iter()
            .find(|e| {
                let host_ok = match (&e.host, host) {
                    (None, _) => true,
                    (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                    (Some(_), None) => false,
                };
                host_ok && path_matches(&e.path, path)
            })
            .map(|e| &e.target)
    }

    /// Whether no route is defined.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split(']')
            .next()
            .map_or(host, |h| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(path: &str, host: Option<&str>) -> Route {
        Route {
            path: path.into(),
            host: host.map(Into::into),
        }
    }

    #[test]
    fn longest_prefix_and_host_first() {
        let a = [r("/", None)];
        let b = [r("/api", None)];
        let c = [r("/", Some("example.com"))];
        let t = RouteTable::build([
            ("a", &a[..], Arc::new("a")),
            ("b", &b[..], Arc::new("b")),
            ("c", &c[..], Arc::new("c")),
        ])
        .expect("no conflict");
        assert_eq!(**t.lookup(Some("x:8080"), "/").expect("a"), "a");
        assert_eq!(**t.lookup(Some("x"), "/api/v1").expect("b"), "b");
        assert_eq!(**t.lookup(Some("x"), "/api").expect("b"), "b");
        assert_eq!(**t.lookup(Some("x"), "/apix").expect("a"), "a");
        assert_eq!(**t.lookup(Some("Example.com:80"), "/api").expect("c"), "c");
    }

    #[test]
    fn conflicts_name_the_owner() {
        let a = [r("/api/", None)];
        let b = [r("/api", None)];
        let err = RouteTable::build([("a", &a[..], Arc::new(1)), ("b", &b[..], Arc::new(2))])
            .expect_err("conflict");
        assert_eq!(err.owner, "a");
    }

    #[test]
    fn unknown_path_is_none() {
        let a = [r("/only", None)];
        let t = RouteTable::build([("a", &a[..], Arc::new(1))]).expect("ok");
        assert!(t.lookup(None, "/other").is_none());
    }
}
