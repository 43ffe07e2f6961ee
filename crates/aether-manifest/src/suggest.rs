//! "Did you mean" hints for unknown keys.

/// The keys of each table, for hints when a key is put in the wrong table.
/// Kept in sync with the types by a test against the JSON Schema.
pub(crate) const SECTIONS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "name",
            "version",
            "component",
            "http",
            "intent",
            "limits",
            "capabilities",
            "env",
            "config",
            "rollout",
        ],
    ),
    ("component", &["path", "build", "workdir"]),
    ("http", &["routes", "virtual_address"]),
    (
        "intent",
        &[
            "replicas",
            "regions",
            "latency",
            "memory",
            "labels",
            "arch",
            "spread",
            "reachable",
            "idle_timeout",
        ],
    ),
    (
        "limits",
        &["memory", "timeout", "fuel", "max_concurrency", "max_body"],
    ),
    (
        "capabilities",
        &["outbound_http", "keyvalue", "env_from_host"],
    ),
    ("rollout", &["strategy", "steps", "interval", "gates"]),
];

/// Edit distance between two short strings, counting a swap of neighbours as one edit
/// (optimal string alignment distance).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The expected key closest to `unknown`, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(unknown: &str, expected: &[&'a str]) -> Option<&'a str> {
    let lower = unknown.to_ascii_lowercase().replace('-', "_");
    expected
        .iter()
        .filter_map(|&cand| {
            if cand == lower {
                return Some((0, cand));
            }
            let d = distance(&lower, cand);
            let limit = (cand.chars().count().max(lower.chars().count()) / 3).max(1);
            if d <= limit {
                return Some((d, cand));
            }
            // `max` for `max_concurrency`, `idle` for `idle_timeout`, …
            if lower.len() >= 3 && (cand.starts_with(&lower) || lower.starts_with(cand)) {
                return Some((limit + 1, cand));
            }
            None
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Tables other than `current` that have a key named `key`, as `[table]` (or `top level`).
pub(crate) fn other_sections(key: &str, current: &str) -> Vec<String> {
    SECTIONS
        .iter()
        .filter(|(section, keys)| *section != current && keys.contains(&key))
        .map(|(section, _)| {
            if section.is_empty() {
                "the top level".to_string()
            } else {
                format!("[{section}]")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos() {
        let keys = ["name", "version", "component", "http", "intent", "limits"];
        assert_eq!(closest("nmae", &keys), Some("name"));
        assert_eq!(closest("Name", &keys), Some("name"));
        assert_eq!(closest("componnet", &keys), Some("component"));
        assert_eq!(closest("limit", &keys), Some("limits"));
        assert_eq!(closest("zzzz", &keys), None);
        let limits = ["memory", "timeout", "fuel", "max_concurrency", "max_body"];
        assert_eq!(closest("timout", &limits), Some("timeout"));
        assert_eq!(closest("max-body", &limits), Some("max_body"));
        assert_eq!(closest("concurrency", &limits), Some("max_concurrency"));
        assert_eq!(closest("cpu", &limits), None);
        assert_eq!(closest("max_concurency", &limits), Some("max_concurrency"));
    }

    #[test]
    fn wrong_table() {
        assert_eq!(other_sections("timeout", ""), vec!["[limits]"]);
        assert_eq!(other_sections("memory", ""), vec!["[intent]", "[limits]"]);
        assert!(other_sections("memory", "limits").contains(&"[intent]".to_string()));
    }
}
