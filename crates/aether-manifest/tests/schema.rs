//! The checked-in schemas match the Rust types. Run with `AETHER_BLESS=1` to rewrite the JSON
//! Schema after changing the types.

use std::path::PathBuf;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn json_schema_file_is_up_to_date() {
    let path = repo_root().join("schema/aetherfile.schema.json");
    let mut generated =
        serde_json::to_string_pretty(&aether_manifest::json_schema()).expect("schema serializes");
    generated.push('\n');
    if std::env::var_os("AETHER_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(repo_root().join("schema")).expect("create schema/");
        std::fs::write(&path, &generated).expect("write schema");
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} is out of date with the Rust types; run `AETHER_BLESS=1 cargo test -p aether-manifest --test schema`",
        path.display()
    );
}

#[test]
fn every_property_has_a_description() {
    fn walk(v: &serde_json::Value, at: &str, missing: &mut Vec<String>) {
        let Some(obj) = v.as_object() else { return };
        if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                let has = prop
                    .get("description")
                    .and_then(|d| d.as_str())
                    .is_some_and(|d| !d.is_empty());
                if !has {
                    missing.push(format!("{at}.{name}"));
                }
                walk(prop, &format!("{at}.{name}"), missing);
            }
        }
        for key in ["$defs", "anyOf"] {
            match obj.get(key) {
                Some(serde_json::Value::Object(defs)) => {
                    for (name, d) in defs {
                        walk(d, name, missing);
                    }
                }
                Some(serde_json::Value::Array(alts)) => {
                    for (i, d) in alts.iter().enumerate() {
                        walk(d, &format!("{at}[{i}]"), missing);
                    }
                }
                _ => {}
            }
        }
    }
    let schema = aether_manifest::json_schema();
    let mut missing = Vec::new();
    walk(&schema, "", &mut missing);
    assert!(
        missing.is_empty(),
        "properties without a description: {missing:?}"
    );
}

#[test]
fn cue_schema_uses_the_same_patterns() {
    let cue = std::fs::read_to_string(repo_root().join("schema/aetherfile.cue"))
        .expect("read aetherfile.cue");
    let schema = serde_json::to_string(&aether_manifest::json_schema()).expect("serializes");
    let value: serde_json::Value = serde_json::from_str(&schema).expect("json");
    let mut patterns = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(p) = m.get("pattern").and_then(|p| p.as_str()) {
                    out.push(p.to_string());
                }
                m.values().for_each(|v| collect(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&value, &mut patterns);
    assert!(patterns.len() >= 8, "{patterns:?}");
    for p in patterns {
        let plain = format!("=~\"{p}\"");
        let raw = format!("=~#\"{p}\"#");
        assert!(
            cue.contains(&plain) || cue.contains(&raw),
            "pattern {p} is missing from schema/aetherfile.cue"
        );
    }
}
