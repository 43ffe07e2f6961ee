//! Builds the C programs in `bpf/` with clang (`-target bpf`) into `OUT_DIR`. Without clang (or
//! when it fails) an empty object is written instead and a warning printed: the crate still
//! builds, and the node reports at start that the kernel data plane is not available, using the
//! userspace path. `scripts/test.sh` installs clang and the libbpf headers, so tests run with the
//! programs.

use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: [&str; 2] = ["admission", "vip"];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("AETHER_CLANG").unwrap_or_else(|_| "clang".to_string());
    println!("cargo:rerun-if-env-changed=AETHER_CLANG");
    for name in PROGRAMS {
        let source = format!("bpf/{name}.c");
        println!("cargo:rerun-if-changed={source}");
        let object = out.join(format!("{name}.o"));
        let mut cmd = Command::new(&clang);
        cmd.args([
            "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-c", &source, "-o",
        ])
        .arg(&object);
        // The multiarch include directory holds <asm/types.h>, which the kernel headers need.
        for dir in [
            "/usr/include/x86_64-linux-gnu",
            "/usr/include/aarch64-linux-gnu",
        ] {
            if std::path::Path::new(dir).join("asm").exists() {
                cmd.arg("-I").arg(dir);
                break;
            }
        }
        let built = match cmd.output() {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                println!(
                    "cargo:warning=aether-ebpf: clang could not build {source}; the node will use the userspace path: {}",
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .next()
                        .unwrap_or("")
                );
                false
            }
            Err(e) => {
                println!(
                    "cargo:warning=aether-ebpf: no clang ({e}); the eBPF programs are not built and the node will use the userspace path (scripts/test.sh installs clang and libbpf-dev)"
                );
                false
            }
        };
        if !built {
            std::fs::write(&object, b"").expect("writing an empty object");
            // A path that does not exist makes cargo run this script again on every build, so
            // the programs are built as soon as clang is installed.
            println!("cargo:rerun-if-changed=/nonexistent/aether-ebpf-needs-clang");
        }
    }
}
