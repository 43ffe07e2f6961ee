//! A lattice of two architectures on loopback: two x86_64 nodes (this build) and one aarch64
//! node (`scripts/cross.sh`'s build, run under `qemu-aarch64`). Every node advertises its
//! built-in labels; a component whose intent says `arch = "aarch64"` is placed on the aarch64
//! node, compiled there for aarch64, and served by the x86_64 nodes over the mesh; a component
//! without it runs anywhere; one asking for an architecture nobody has is reported, not run.
//!
//! The aarch64 binary is `AETHER_AARCH64_BIN`, else `target/aarch64-unknown-linux-gnu/debug/
//! aether-d`. Without it (or without qemu-aarch64) the test says so and passes, unless
//! `AETHER_REQUIRE_AARCH64=1` (set by `.ci/run`, which builds it first), when it fails.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::{Node, Operator, eventually, fixture, join_args};
use http::Method;
use serde_json::Value;

const QEMU: &str = "qemu-aarch64";
const SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// The cross-built node binary and the emulator, or why they are not here.
fn aarch64_node() -> Result<PathBuf, String> {
    let bin = std::env::var_os("AETHER_AARCH64_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/aarch64-unknown-linux-gnu/debug/aether-d")
        });
    if !bin.exists() {
        return Err(format!(
            "{} is missing (build it with scripts/cross.sh)",
            bin.display()
        ));
    }
    let qemu = std::process::Command::new(QEMU).arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        return Err(format!(
            "{QEMU} is not installed (Debian package qemu-user)"
        ));
    }
    if !Path::new(SYSROOT).exists() {
        return Err(format!(
            "{SYSROOT} is missing (Debian package libc6-arm64-cross)"
        ));
    }
    Ok(bin)
}

fn aetherfile(name: &str, route: &str, intent: &str) -> String {
    format!(
        "name = \"{name}\"\ncomponent = \"{name}.wasm\"\n[http]\nroutes = [\"{route}\"]\n\
         [intent]\nreplicas = 1\n{intent}"
    )
}

/// `GET /v1/components/NAME`; `Null` while the node has not got the essence yet.
fn component(node: &Node, name: &str) -> Value {
    let path = format!("/v1/components/{name}");
    common::block_on(node.client().json(Method::GET, &path, bytes::Bytes::new()))
        .unwrap_or(Value::Null)
}

fn hosts(node: &Node, name: &str) -> Vec<String> {
    component(node, name)["placement"]["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .filter_map(|h| h["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The file names in a node's compiled-code cache.
fn cached(node: &Node) -> Vec<String> {
    std::fs::read_dir(node.data.join("compile-cache"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".cwasm"))
                .collect()
        })
        .unwrap_or_default()
}

fn label<'a>(member: &'a Value, key: &str) -> &'a str {
    member["labels"][key].as_str().unwrap_or("")
}

#[test]
fn an_aarch64_node_hosts_what_asks_for_it_and_x86_64_nodes_serve_it() {
    let bin = match aarch64_node() {
        Ok(bin) => bin,
        Err(why) if std::env::var("AETHER_REQUIRE_AARCH64").as_deref() == Ok("1") => {
            panic!("AETHER_REQUIRE_AARCH64=1 but {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let mut first = Node::new(201, scratch.path(), &operator);
    let mut second = Node::new(202, scratch.path(), &operator);
    let mut arm = Node::new(203, scratch.path(), &operator);
    arm.program = bin;
    arm.launcher = vec![QEMU.into(), "-L".into(), SYSROOT.into()];
    arm.ready_timeout = Duration::from_secs(120);

    first.start(&[]);
    let invite = operator.invite();
    second.start(&join_args(&first, Some(&invite)));
    let started = Instant::now();
    let mut arm_args = join_args(&first, Some(&invite));
    arm_args.extend(["--max-instances".into(), "16".into()]);
    arm.start(&arm_args);
    eprintln!(
        "aarch64 node ready under qemu after {:?}",
        started.elapsed()
    );

    let nodes = [&first, &second, &arm];
    let ids: Vec<String> = nodes.iter().map(|n| n.id()).collect();
    eventually(
        "every node sees every node",
        Duration::from_secs(120),
        || nodes.iter().all(|n| n.sees_alive(&ids)),
    );

    // Built-in labels, as every node sees them.
    for member in first.members() {
        let arch = if member["id"] == ids[2].as_str() {
            "aarch64"
        } else {
            "x86_64"
        };
        assert_eq!(label(&member, "arch"), arch, "{member}");
        assert_eq!(label(&member, "os"), "linux", "{member}");
        assert!(!label(&member, "cores").is_empty(), "{member}");
        assert!(label(&member, "memory").ends_with("MiB"), "{member}");
    }

    // Only the aarch64 node qualifies; it compiles and runs the component, the others forward.
    let deployed = Instant::now();
    first.deploy(operator.seal(
        &aetherfile("on-arm", "/arm", "arch = \"aarch64\"\n"),
        &fixture("hello"),
    ));
    eventually(
        "the aarch64 node is the host on every node",
        Duration::from_secs(60),
        || nodes.iter().all(|n| hosts(n, "on-arm") == [ids[2].clone()]),
    );
    let took = eventually(
        "both x86_64 nodes serve the component hosted on the aarch64 node",
        Duration::from_secs(180),
        || {
            [&first, &second]
                .iter()
                .all(|n| n.request("GET", "/arm", b"").status == 200)
        },
    );
    eprintln!(
        "deploy to first response through the x86_64 nodes, compiled and run under qemu: {:?} \
         (polled for {took:?})",
        deployed.elapsed()
    );
    for node in [&first, &second] {
        let resp = node.request("GET", "/arm", b"");
        assert_eq!(resp.body, "Hello from Aether!\n");
        let to = resp.header("aether-forwarded-to").unwrap_or("");
        assert!(
            !to.is_empty() && ids[2].contains(to),
            "{} answered without forwarding to the aarch64 node: {resp:?}",
            node.ip
        );
    }
    assert_eq!(arm.request("GET", "/arm", b"").status, 200);
    for line in arm.stderr().lines().filter(|l| l.contains("worker")) {
        eprintln!("aarch64 node: {line}");
    }
    let arm_cache = cached(&arm);
    assert!(
        arm_cache.iter().any(|n| n.contains("-aarch64-linux-")),
        "no aarch64 code in the aarch64 node's cache: {arm_cache:?}\n{}",
        arm.stderr()
    );
    for node in [&first, &second] {
        let names = cached(node);
        assert!(
            names.iter().all(|n| n.contains("-x86_64-linux-")),
            "{}: {names:?}",
            node.ip
        );
    }

    // Without an arch, any node may host it, and all three serve it.
    first.deploy(operator.seal(&aetherfile("anywhere", "/any", ""), &fixture("hello")));
    eventually("all three serve it", Duration::from_secs(180), || {
        nodes
            .iter()
            .all(|n| n.request("GET", "/any", b"").status == 200)
    });
    assert_eq!(hosts(&first, "anywhere").len(), 1);

    // An architecture no member has: nothing runs it and the report says why.
    first.deploy(operator.seal(
        &aetherfile("on-riscv", "/riscv", "arch = \"riscv64\"\n"),
        &fixture("hello"),
    ));
    eventually(
        "the shortage names the architecture",
        Duration::from_secs(30),
        || {
            component(&first, "on-riscv")
                .to_string()
                .contains("riscv64")
        },
    );
    assert!(hosts(&first, "on-riscv").is_empty());
    assert_ne!(first.request("GET", "/riscv", b"").status, 200);
}
