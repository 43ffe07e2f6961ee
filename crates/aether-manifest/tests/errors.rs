//! Bad Aetherfiles: each error points at the right line and column and says how to fix it.

use aether_manifest::ManifestError;
use miette::{GraphicalReportHandler, GraphicalTheme};

const HEAD: &str = "name = \"x\"\ncomponent = \"x.wasm\"\n";

fn parse_err(source: &str) -> ManifestError {
    match aether_manifest::parse(source, "Aetherfile") {
        Ok(m) => panic!("expected an error for:\n{source}\ngot {m:?}"),
        Err(e) => e,
    }
}

/// Asserts the location, that `Display` starts with `file:line:col`, and that every needle is in
/// the message or the hint.
#[track_caller]
fn expect(source: &str, line: usize, col: usize, needles: &[&str]) -> ManifestError {
    let err = parse_err(source);
    assert_eq!(
        err.location(),
        Some(("Aetherfile".to_string(), line, col)),
        "wrong location for {err}"
    );
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("Aetherfile:{line}:{col}: ")),
        "{shown}"
    );
    let all = format!("{shown}\n{}", err.hint().unwrap_or_default());
    for needle in needles {
        assert!(all.contains(needle), "{needle:?} not in {all:?}");
    }
    err
}

fn render(err: &ManifestError) -> String {
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(200)
        .render_report(&mut out, err)
        .expect("render");
    out
}

#[test]
fn unknown_top_level_key_suggests_the_right_one() {
    expect(
        "nmae = \"x\"\ncomponent = \"x.wasm\"\n",
        1,
        1,
        &["unknown key `nmae`", "did you mean `name`?"],
    );
}

#[test]
fn unknown_nested_key_suggests_the_right_one() {
    expect(
        &format!("{HEAD}[limits]\ntimout = \"3s\"\n"),
        4,
        1,
        &[
            "unknown key `timout` in [limits]",
            "did you mean `timeout`?",
        ],
    );
    expect(
        &format!("{HEAD}[http]\nroutes = [{{ path = \"/\", hots = \"a.com\" }}]\n"),
        4,
        25,
        &["unknown key `hots`", "did you mean `host`?"],
    );
    expect(
        "name = \"x\"\n[component]\npath = \"a.wasm\"\nbiuld = \"make\"\n",
        4,
        1,
        &[
            "unknown key `biuld` in [component]",
            "did you mean `build`?",
        ],
    );
}

#[test]
fn unknown_key_without_a_close_match_lists_the_keys() {
    expect(
        &format!("{HEAD}[limits]\nzzz = 1\n"),
        4,
        1,
        &[
            "unknown key `zzz`",
            "expected one of: `memory`, `timeout`, `fuel`, `max_concurrency`, `max_body`",
        ],
    );
}

#[test]
fn key_in_the_wrong_table_says_where_it_belongs() {
    expect(
        &format!("{HEAD}timeout = \"3s\"\n"),
        3,
        1,
        &["unknown key `timeout` at the top level", "[limits]"],
    );
}

#[test]
fn wrong_type() {
    expect(
        "name = 5\ncomponent = \"x.wasm\"\n",
        1,
        8,
        &[
            "wrong type for `name`",
            "expected a string, found integer `5`",
        ],
    );
    expect(
        &format!("{HEAD}[intent]\nspread = \"yes\"\n"),
        4,
        10,
        &[
            "wrong type for `intent.spread`",
            "expected a boolean",
            "spread = true",
        ],
    );
    expect(
        &format!("{HEAD}[http]\nroutes = \"/\"\n"),
        4,
        10,
        &["expected an array", "routes = [\"/\", \"/api\"]"],
    );
    expect(
        &format!("{HEAD}[intent]\nreplicas = \"3\"\n"),
        4,
        12,
        &["wrong type for `intent.replicas`", "replicas = 3"],
    );
}

#[test]
fn size_without_unit() {
    let err = expect(
        &format!("{HEAD}[limits]\nmemory = 64\n"),
        4,
        10,
        &["`limits.memory`", "bare number `64`", "\"64MiB\""],
    );
    let report = render(&err);
    assert!(report.contains("[Aetherfile:4:10]"), "{report}");
    assert!(report.contains("memory = 64"), "{report}");
    assert!(report.contains("help:"), "{report}");
}

#[test]
fn size_with_bad_unit() {
    expect(
        &format!("{HEAD}[limits]\nmemory = \"64 Mb\"\n"),
        4,
        10,
        &[
            "invalid size `64 Mb`",
            "unknown unit `Mb`",
            "did you mean \"64MB\"?",
        ],
    );
    expect(
        &format!("{HEAD}[limits]\nmax_body = \"10 MiB\"\n"),
        4,
        12,
        &["no spaces", "\"10MiB\""],
    );
    expect(
        &format!("{HEAD}[intent]\nmemory = \"1.5GiB\"\n"),
        4,
        10,
        &["fractions are not supported"],
    );
}

#[test]
fn duration_with_bad_unit() {
    expect(
        &format!("{HEAD}[limits]\ntimeout = \"30 parsecs\"\n"),
        4,
        11,
        &[
            "`limits.timeout`",
            "invalid duration `30 parsecs`",
            "unknown unit `parsecs`",
            "ms",
        ],
    );
    expect(
        &format!("{HEAD}[limits]\ntimeout = 30\n"),
        4,
        11,
        &["bare number `30`", "\"30s\""],
    );
    expect(
        &format!("{HEAD}[intent]\nidle_timeout = \"5mins\"\n"),
        4,
        16,
        &["did you mean \"5m\"?"],
    );
}

#[test]
fn unquoted_size_is_a_toml_error_with_a_hint() {
    expect(
        &format!("{HEAD}[limits]\nmemory = 64MiB\n"),
        4,
        10,
        &["invalid TOML", "\"64MiB\""],
    );
}

#[test]
fn out_of_range() {
    expect(
        &format!("{HEAD}[limits]\nmemory = \"8GiB\"\n"),
        4,
        10,
        &["`limits.memory` is 8GiB", "between 64KiB and 4GiB"],
    );
    expect(
        &format!("{HEAD}[limits]\ntimeout = \"2h\"\n"),
        4,
        11,
        &["`limits.timeout` is 2h", "between 1ms and 1h"],
    );
    expect(
        &format!("{HEAD}[limits]\nmax_concurrency = 0\n"),
        4,
        19,
        &["`limits.max_concurrency` is 0", "between 1 and 10000"],
    );
    expect(
        &format!("{HEAD}[limits]\nmax_concurrency = -1\n"),
        4,
        19,
        &[
            "invalid value for `limits.max_concurrency`",
            "found integer `-1`",
        ],
    );
    expect(
        &format!("{HEAD}[limits]\nfuel = 0\n"),
        4,
        8,
        &["`limits.fuel` is 0", "remove `fuel`"],
    );
    expect(
        &format!("{HEAD}[intent]\nreplicas = 0\n"),
        4,
        12,
        &["`intent.replicas` is 0", "min = 0"],
    );
    expect(
        &format!("{HEAD}[intent]\nreplicas = {{ min = 0, max = 1001 }}\n"),
        4,
        29,
        &["`intent.replicas.max` is 1001", "between 1 and 1000"],
    );
    expect(
        &format!("{HEAD}[intent]\nlatency = {{ from = \"eu\", p99 = \"2m\" }}\n"),
        4,
        32,
        &["`intent.latency.p99` is 2m", "between 1ms and 1m"],
    );
}

#[test]
fn bad_rollout_sections() {
    expect(
        &format!("{HEAD}[rollout]\nstrategy = \"canery\"\n"),
        4,
        12,
        &["unknown variant `canery`", "`canary`"],
    );
    expect(
        &format!("{HEAD}[rollout]\nsteps = [5, 50, 25]\n"),
        4,
        17,
        &[
            "`rollout.steps` must grow: 25 follows 50",
            "increasing order",
        ],
    );
    expect(
        &format!("{HEAD}[rollout]\nsteps = [0, 100]\n"),
        4,
        10,
        &["`rollout.steps[0]` is 0", "percentage"],
    );
    expect(
        &format!("{HEAD}[rollout]\nsteps = []\n"),
        4,
        9,
        &["`rollout.steps` has 0 steps"],
    );
    expect(
        &format!("{HEAD}[rollout]\ninterval = \"0s\"\n"),
        4,
        12,
        &["`rollout.interval` is 0s", "between 1s and 24h"],
    );
    expect(
        &format!("{HEAD}[rollout.gates]\nmax_p99_ratio = 0.5\n"),
        4,
        17,
        &["`rollout.gates.max_p99_ratio` is 0.5", "between 1 and 1000"],
    );
}

#[test]
fn min_greater_than_max() {
    let err = expect(
        &format!("{HEAD}[intent]\nreplicas = {{ min = 5, max = 2 }}\n"),
        4,
        20,
        &["`intent.replicas.min` (5) is greater than `intent.replicas.max` (2)"],
    );
    let report = render(&err);
    assert!(report.contains("max is here"), "{report}");
}

#[test]
fn missing_required_keys() {
    expect(
        "name = \"x\"\n",
        1,
        1,
        &[
            "missing required key `component`",
            "component = \"app.wasm\"",
        ],
    );
    expect(
        "name = \"x\"\n[component]\nbuild = \"make\"\n",
        2,
        2,
        &["missing required key `path` in [component]"],
    );
    expect(
        &format!("{HEAD}[intent]\nreplicas = {{ min = 5 }}\n"),
        4,
        1,
        &["missing required key `max`"],
    );
}

#[test]
fn bad_names() {
    expect(
        "name = \"My_App\"\ncomponent = \"x.wasm\"\n",
        1,
        8,
        &[
            "the name `My_App` contains uppercase letters",
            "name = \"my-app\"",
        ],
    );
    expect(
        "name = \"1app\"\ncomponent = \"x.wasm\"\n",
        1,
        8,
        &["does not start with a letter"],
    );
    expect(
        "name = \"app-\"\ncomponent = \"x.wasm\"\n",
        1,
        8,
        &["ends with `-`"],
    );
    let long = "a".repeat(64);
    expect(
        &format!("name = \"{long}\"\ncomponent = \"x.wasm\"\n"),
        1,
        8,
        &["64 characters long"],
    );
}

#[test]
fn route_without_leading_slash() {
    expect(
        &format!("{HEAD}[http]\nroutes = [\"/\", \"api\"]\n"),
        4,
        16,
        &["route path `api` does not start with `/`", "\"/api\""],
    );
    expect(
        &format!("{HEAD}[[http.routes]]\npath = \"/\"\n[[http.routes]]\npath = \"v1\"\n"),
        6,
        8,
        &["route path `v1` does not start with `/`"],
    );
}

#[test]
fn duplicate_route() {
    let err = expect(
        &format!("{HEAD}[http]\nroutes = [\"/\", \"/api\", {{ path = \"/api\" }}]\n"),
        4,
        24,
        &["duplicate route `/api`"],
    );
    let report = render(&err);
    assert!(report.contains("first routed here"), "{report}");
    // The same path on different hosts is fine.
    aether_manifest::parse(
        &format!("{HEAD}[http]\nroutes = [\"/\", {{ path = \"/\", host = \"a.com\" }}]\n"),
        "Aetherfile",
    )
    .expect("same path on another host is allowed");
}

#[test]
fn bad_host_patterns() {
    expect(
        &format!(
            "{HEAD}[capabilities]\noutbound_http = [\"api.example.com\", \"https://x.com/v1\"]\n"
        ),
        4,
        37,
        &["includes the scheme `https://`", "\"x.com\""],
    );
    expect(
        &format!("{HEAD}[capabilities]\noutbound_http = [\"*\"]\n"),
        4,
        18,
        &["would allow every host"],
    );
    expect(
        &format!("{HEAD}[capabilities]\noutbound_http = [\"api.*.com\"]\n"),
        4,
        18,
        &["contains `*`", "whole first label"],
    );
    expect(
        &format!("{HEAD}[capabilities]\noutbound_http = [\"x.com:99999\"]\n"),
        4,
        18,
        &["port `99999`"],
    );
    expect(
        &format!("{HEAD}[http]\nroutes = [{{ path = \"/\", host = \"Example.com\" }}]\n"),
        4,
        32,
        &["uppercase", "\"example.com\""],
    );
}

#[test]
fn latency_from_must_not_be_empty() {
    expect(
        &format!("{HEAD}[intent]\nlatency = {{ from = \"\", p99 = \"30ms\" }}\n"),
        4,
        20,
        &["`intent.latency.from` is empty"],
    );
}

#[test]
fn other_rules() {
    expect(
        &format!("{HEAD}[env]\n\"1X\" = \"a\"\n"),
        4,
        1,
        &["environment variable name `1X` starts with a digit"],
    );
    expect(
        &format!("{HEAD}[intent]\nregions = [\"eu-west\", \"eu-west\"]\n"),
        4,
        23,
        &["duplicate region `eu-west`"],
    );
    expect(
        &format!("{HEAD}[capabilities]\nenv_from_host = [\"TOKEN\"]\n[env]\nTOKEN = \"x\"\n"),
        4,
        18,
        &["`TOKEN` is both set in [env] and copied from the host"],
    );
}

#[test]
fn invalid_toml_syntax() {
    expect(
        "name = \"x\ncomponent = \"x.wasm\"\n",
        1,
        10,
        &["invalid TOML"],
    );
    expect(
        "name = \"x\"\ncomponent = \"x.wasm\"\nname = \"y\"\n",
        3,
        1,
        &["duplicate key `name`"],
    );
    expect(
        "name = \"x\"\ncomponent = \"x.wasm\"\n[component]\npath = \"a.wasm\"\n",
        3,
        2,
        &["duplicate key `component`"],
    );
}

#[test]
fn several_problems_are_all_reported_first_one_first() {
    let err = expect(
        &format!("{HEAD}[limits]\nmax_concurrency = 0\nmemory = \"8GiB\"\n"),
        4,
        19,
        &["max_concurrency"],
    );
    let ManifestError::Invalid(inner) = &err else {
        panic!("expected a located error");
    };
    assert_eq!(inner.others().len(), 1);
    assert_eq!(inner.others()[0].line(), 5);
    assert!(render(&err).contains("`limits.memory` is 8GiB"));
}

#[test]
fn columns_count_characters_not_bytes() {
    expect(
        "# é\nname = \"x\"\ncomponent = \"x.wasm\"\n[config]\n\"é\" = \"x\"\n",
        5,
        1,
        &["config key `é` contains `é`"],
    );
    expect(
        "name = \"x\" # ééé\ncomponent = \"x.wasm\"\n[limits]\nmemory = \"1é\"\n",
        4,
        10,
        &["unknown unit `é`"],
    );
}

#[test]
fn architectures_are_named_as_nodes_name_them() {
    expect(
        &format!("{HEAD}[intent]\narch = \"arm64\"\n"),
        4,
        8,
        &[
            "architecture `arm64`",
            "did you mean \"aarch64\"?",
            "\"x86_64\"",
        ],
    );
    expect(
        &format!("{HEAD}[intent]\narch = [\"x86_64\", \"sparc\"]\n"),
        4,
        19,
        &["architecture `sparc` is not one a node can run on"],
    );
    expect(
        &format!("{HEAD}[intent]\narch = 64\n"),
        4,
        8,
        &["expected an architecture name or a list of them"],
    );
    let one = aether_manifest::parse(
        &format!("{HEAD}[intent]\narch = \"aarch64\"\n"),
        "Aetherfile",
    )
    .expect("one architecture parses");
    assert_eq!(one.intent.arch, ["aarch64"]);
}
