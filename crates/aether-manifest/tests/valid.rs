//! Valid Aetherfiles parse to the expected values and survive the canonical JSON round trip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aether_manifest::{
    ByteSize, Capabilities, ComponentSource, Duration, Gates, Http, Intent, LatencyTarget, Limits,
    Manifest, Replicas, Rollout, Route, Strategy,
};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/valid")
        .join(name)
}

fn valid_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data(""))
        .expect("tests/data/valid exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "expected the valid examples, found {files:?}"
    );
    files
}

#[test]
fn minimal() {
    let m = aether_manifest::parse(
        "name=\"x\"\ncomponent=\"x.wasm\"\n[http]\nroutes=[\"/\"]",
        "Aetherfile",
    )
    .expect("minimal manifest parses");
    assert_eq!(
        m,
        Manifest {
            name: "x".into(),
            version: None,
            component: ComponentSource::Path("x.wasm".into()),
            http: Http {
                routes: vec![Route::new("/")],
                virtual_address: false,
            },
            intent: Intent::default(),
            limits: Limits::default(),
            capabilities: Capabilities::default(),
            env: BTreeMap::new(),
            config: BTreeMap::new(),
            rollout: Rollout::default(),
        }
    );
    assert_eq!(m.component.path(), Path::new("x.wasm"));
    assert_eq!(m.component.build_command(), None);
}

#[test]
fn defaults_are_documented_values() {
    let m = aether_manifest::parse("name = \"x\"\ncomponent = \"x.wasm\"\n", "Aetherfile")
        .expect("parses");
    assert!(m.http.routes.is_empty());
    assert_eq!(m.intent.replicas, Replicas::Fixed(1));
    assert!(!m.intent.spread);
    assert!(m.intent.arch.is_empty());
    assert_eq!(m.limits.memory, ByteSize(64 * 1024 * 1024));
    assert_eq!(
        m.limits.timeout,
        Duration(std::time::Duration::from_secs(30))
    );
    assert_eq!(m.limits.fuel, None);
    assert_eq!(m.limits.max_concurrency, 100);
    assert_eq!(m.limits.max_body, ByteSize(10 * 1024 * 1024));
    assert_eq!(m.capabilities, Capabilities::default());
    assert_eq!(m.rollout.strategy, Strategy::AllAtOnce);
    assert_eq!(m.rollout.steps, [5, 25, 100]);
    assert_eq!(m.rollout.interval, Duration::from_secs(30));
    assert_eq!(m.rollout.gates.min_requests, 20);
    assert!(
        !String::from_utf8_lossy(&m.to_canonical_json()).contains("rollout"),
        "a default [rollout] stays out of the canonical form, so older essences keep their bytes"
    );
}

#[test]
fn full_example_sets_every_field() {
    let m = aether_manifest::load(&data("full.toml")).expect("full.toml parses");
    let strings = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let map = |xs: &[(&str, &str)]| {
        xs.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    let expected = Manifest {
        name: "hello-world".into(),
        version: Some("1.2.0".into()),
        component: ComponentSource::Build {
            path: "target/wasm32-wasip2/release/hello.wasm".into(),
            build: Some("cargo build --release --target wasm32-wasip2".into()),
            workdir: Some(".".into()),
        },
        http: Http {
            virtual_address: true,
            routes: vec![
                Route::new("/"),
                Route::new("/static"),
                Route {
                    path: "/api".into(),
                    host: Some("api.example.com".into()),
                },
                Route {
                    path: "/api".into(),
                    host: Some("example.com:8080".into()),
                },
            ],
        },
        intent: Intent {
            replicas: Replicas::Range { min: 0, max: 5 },
            regions: strings(&["eu-west", "ap-southeast"]),
            latency: Some(LatencyTarget {
                from: "ap-southeast".into(),
                p99: Duration::from_millis(30),
            }),
            memory: Some(ByteSize::mib(128)),
            labels: map(&[("tier", "edge"), ("example.com/gpu", "none")]),
            arch: strings(&["x86_64", "aarch64"]),
            spread: true,
            reachable: true,
            idle_timeout: Some(Duration::from_secs(300)),
        },
        limits: Limits {
            memory: ByteSize::mib(256),
            timeout: Duration::from_secs(10),
            fuel: Some(1_000_000_000),
            max_concurrency: 50,
            max_body: ByteSize(1_000_000),
        },
        capabilities: Capabilities {
            outbound_http: strings(&[
                "api.example.com",
                "api.example.com:8443",
                "*.cdn.example.com",
                "127.0.0.1:8080",
                "[::1]:9000",
            ]),
            keyvalue: strings(&["sessions", "cache.v2"]),
            env_from_host: strings(&["DATABASE_URL"]),
        },
        env: map(&[("LOG_LEVEL", "info"), ("_PRIVATE", "1")]),
        config: map(&[("greeting", "hello"), ("feature.flag-x", "on")]),
        rollout: Rollout {
            strategy: Strategy::Canary,
            steps: vec![10, 50, 100],
            interval: Duration::from_secs(60),
            gates: Gates {
                max_error_increase: 0.5,
                max_fault_increase: 0.0,
                max_p99_ratio: 1.5,
                min_requests: 50,
            },
        },
    };
    assert_eq!(m, expected);
    assert_eq!(
        m.component.build_command(),
        Some("cargo build --release --target wasm32-wasip2")
    );
    assert_eq!(m.component.workdir(), Some(Path::new(".")));
    assert_eq!(m.intent.replicas.min(), 0);
    assert_eq!(m.intent.replicas.max(), 5);
}

#[test]
fn array_of_tables_routes() {
    let m = aether_manifest::load(&data("tables.toml")).expect("tables.toml parses");
    assert_eq!(
        m.http.routes,
        vec![
            Route::new("/"),
            Route {
                path: "/v1".into(),
                host: Some("api.example.com".into()),
            },
        ]
    );
    assert_eq!(m.intent.replicas, Replicas::Fixed(3));
    assert_eq!(m.limits.timeout, Duration::from_millis(250));
}

#[test]
fn canonical_json_round_trips() {
    for file in valid_files() {
        let m = aether_manifest::load(&file).expect("valid example parses");
        let bytes = m.to_canonical_json();
        let back = Manifest::from_canonical_json(&bytes).expect("canonical JSON reads back");
        assert_eq!(back, m, "{}", file.display());
        // Deterministic: the same manifest always gives the same bytes.
        assert_eq!(back.to_canonical_json(), bytes, "{}", file.display());
    }
}

#[test]
fn canonical_json_is_stable_text() {
    let m = aether_manifest::parse(
        "name = \"x\"\ncomponent = \"x.wasm\"\n[env]\nB = \"2\"\nA = \"1\"\n",
        "Aetherfile",
    )
    .expect("parses");
    let text = String::from_utf8(m.to_canonical_json()).expect("utf-8");
    assert_eq!(
        text,
        r#"{"name":"x","component":"x.wasm","http":{"routes":[]},"intent":{"replicas":1,"regions":[],"labels":{},"spread":false},"limits":{"memory":"64MiB","timeout":"30s","max_concurrency":100,"max_body":"10MiB"},"capabilities":{"outbound_http":[],"keyvalue":[],"env_from_host":[]},"env":{"A":"1","B":"2"},"config":{}}"#
    );
}

#[test]
fn canonical_json_is_checked_too() {
    let err = Manifest::from_canonical_json(
        br#"{"name":"x","component":"x.wasm","http":{"routes":["api"]}}"#,
    )
    .expect_err("route without / is rejected");
    assert!(err.to_string().contains("http.routes[0].path"), "{err}");
    assert_eq!(err.location(), None);

    let err = Manifest::from_canonical_json(
        br#"{"name":"x","component":"x.wasm","limits":{"memory":64}}"#,
    )
    .expect_err("bare number is rejected");
    assert!(
        err.to_string().contains("has no unit") || err.to_string().contains("bare number"),
        "{err}"
    );

    let err = Manifest::from_canonical_json(br#"{"name":"x","component":"x.wasm","extra":1}"#)
        .expect_err("unknown field is rejected");
    assert!(err.to_string().contains("extra"), "{err}");
}

#[test]
fn sizes_and_durations_print_canonically() {
    let m = aether_manifest::parse(
        "name = \"x\"\ncomponent = \"x.wasm\"\n[limits]\nmemory = \"65536KiB\"\ntimeout = \"120000ms\"\nmax_body = \"10kB\"\n",
        "Aetherfile",
    )
    .expect("parses");
    assert_eq!(m.limits.memory.to_string(), "64MiB");
    assert_eq!(m.limits.timeout.to_string(), "2m");
    assert_eq!(m.limits.max_body.to_string(), "10000B");
}

#[test]
fn load_reports_missing_file() {
    let path = Path::new("/nonexistent/dir/Aetherfile");
    let err = aether_manifest::load(path).expect_err("no such file");
    assert!(
        err.to_string().contains("/nonexistent/dir/Aetherfile"),
        "{err}"
    );
    assert!(matches!(err, aether_manifest::ManifestError::Io { .. }));
}

#[test]
fn repository_examples_parse() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let Ok(dirs) = std::fs::read_dir(&examples) else {
        return; // no examples yet
    };
    for dir in dirs {
        let file = dir.expect("readable dir entry").path().join("Aetherfile");
        if file.is_file() {
            let m =
                aether_manifest::load(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let back = Manifest::from_canonical_json(&m.to_canonical_json()).expect("round trip");
            assert_eq!(back, m);
        }
    }
}

/// The annotated example in the crate documentation is itself a valid Aetherfile.
#[test]
fn crate_doc_example_parses() {
    let lib = include_str!("../src/lib.rs");
    let mut block = String::new();
    let mut inside = false;
    for line in lib.lines() {
        let Some(text) = line.strip_prefix("//!") else {
            continue;
        };
        let text = text.strip_prefix(' ').unwrap_or(text);
        if text.starts_with("```") {
            if inside {
                break;
            }
            inside = text == "```toml";
            continue;
        }
        if inside {
            block.push_str(text);
            block.push('\n');
        }
    }
    assert!(block.contains("[capabilities]"), "example not found");
    let m = aether_manifest::parse(&block, "lib.rs example").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.name, "hello");
    assert_eq!(m.limits.fuel, Some(1_000_000_000));
}
