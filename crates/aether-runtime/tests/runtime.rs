//! The runtime against real components built from source by
//! `scripts/build-fixtures.sh`: three toolchains, faults, limits and grants.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aether_manifest::Manifest;
use aether_runtime::{
    CacheOutcome, CasOutcome, KeyPage, KeyValueBackend, KeyValueError, KvFuture, LoadError,
    LoadedComponent, LogStream, Runtime, RuntimeConfig,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use wasmtime_wasi_http::Error as HttpError;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/fixtures")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "fixture {} missing ({e}); run scripts/build-fixtures.sh first",
            path.display()
        )
    })
}

/// One runtime for the whole test binary, with a compile cache shared across runs.
fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("runtime-compile-cache");
        Runtime::new(RuntimeConfig {
            cache_dir: Some(cache),
            max_instances: 64,
            ..RuntimeConfig::default()
        })
        .expect("runtime")
    })
}

fn manifest(extra: &str) -> Manifest {
    let text =
        format!("name = \"probe\"\ncomponent = \"probe.wasm\"\n[http]\nroutes = [\"/\"]\n{extra}");
    aether_manifest::parse(&text, "Aetherfile").expect("valid manifest")
}

fn load(wasm: &str, extra: &str) -> LoadedComponent {
    runtime()
        .load(&manifest(extra), &fixture(wasm))
        .expect("loads")
}

type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, HttpError>;

fn body(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn request(path: &str, payload: TestBody) -> hyper::Request<TestBody> {
    hyper::Request::builder()
        .uri(format!("http://localhost{path}"))
        .header("host", "localhost")
        .body(payload)
        .expect("request")
}

async fn call(c: &LoadedComponent, path: &str) -> (u16, String) {
    call_with(c, request(path, body(Bytes::new()))).await
}

async fn call_with(c: &LoadedComponent, req: hyper::Request<TestBody>) -> (u16, String) {
    let resp = c.handle(req, false).await;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn components_from_three_toolchains_serve_unchanged() {
    for (wasm, expected) in [
        ("hello", "Hello from Aether!\n"),
        ("hello-wstd", "Hello from wstd!\n"),
        ("hello-py", "Hello from Python!\n"),
    ] {
        let c = load(wasm, "");
        for _ in 0..3 {
            assert_eq!(call(&c, "/").await, (200, expected.to_string()), "{wasm}");
        }
    }
}

#[tokio::test]
async fn second_load_comes_from_the_compile_cache() {
    let _ = load("probe", "");
    let again = load("probe", "");
    assert_eq!(again.cache_outcome(), CacheOutcome::Hit);
    assert_eq!(call(&again, "/").await.0, 200);
}

/// A runtime with its compile cache in `dir`.
fn runtime_in(dir: &std::path::Path) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.to_path_buf()),
        max_instances: 8,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// Pre-compiles the probe on each of `runtimes` at once; returns how many compiled it.
fn compiles_at_once(runtimes: &[&Runtime]) -> usize {
    let wasm = fixture("probe");
    let outcomes: Vec<CacheOutcome> = std::thread::scope(|s| {
        let loads: Vec<_> = runtimes
            .iter()
            .map(|rt| s.spawn(|| rt.precompile(&manifest(""), &wasm).expect("compiles")))
            .collect();
        loads
            .into_iter()
            .map(|l| l.join().expect("thread"))
            .collect()
    });
    outcomes
        .iter()
        .filter(|o| **o == CacheOutcome::Miss)
        .count()
}

#[test]
fn loads_of_one_component_at_once_compile_it_once() {
    let dir = tempfile::tempdir().expect("cache dir");
    let rt = runtime_in(dir.path());
    let misses = compiles_at_once(&[&rt, &rt, &rt]);
    assert_eq!(misses, 1);
    assert_eq!(rt.metrics().cache_misses.get(), 1);
}

#[test]
fn runtimes_sharing_a_cache_directory_compile_once() {
    let dir = tempfile::tempdir().expect("cache dir");
    let (a, b) = (runtime_in(dir.path()), runtime_in(dir.path()));
    let misses = compiles_at_once(&[&a, &b]);
    assert_eq!(misses, 1, "nodes on one machine sharing a cache");
}

#[tokio::test]
async fn unwritable_cache_still_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").expect("file");
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: Some(blocker.join("cache")),
        max_instances: 8,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let c = rt.load(&manifest(""), &fixture("hello")).expect("loads");
    assert_eq!(c.cache_outcome(), CacheOutcome::Uncached);
    assert_eq!(call(&c, "/").await.0, 200);
}

#[test]
fn refuses_what_is_not_a_component() {
    let m = manifest("");
    match runtime().load(&m, b"hello, not wasm") {
        Err(LoadError::NotWasm { .. }) => {}
        other => panic!("expected NotWasm, got {:?}", other.err()),
    }
    match runtime().load(&m, b"\0asm\x01\0\0\0") {
        Err(e @ LoadError::CoreModule { .. }) => {
            assert!(e.to_string().contains("wasm32-wasip2"), "{e}");
        }
        other => panic!("expected CoreModule, got {:?}", other.err()),
    }
    match runtime().load(&m, &fixture("missing-import")) {
        Err(e @ LoadError::MissingImports { .. }) => {
            assert!(e.to_string().contains("acme:missing/thing@1.0.0"), "{e}");
        }
        other => panic!("expected MissingImports, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn a_trap_is_a_500_and_the_next_request_is_fine() {
    let c = load("probe", "");
    let (status, text) = call(&c, "/trap").await;
    assert_eq!(status, 500);
    assert!(text.contains("component `probe` trapped"), "{text}");
    assert_eq!(call(&c, "/").await, (200, "probe ok".into()));
    let host_lines: Vec<_> = c
        .logs()
        .tail(50)
        .into_iter()
        .filter(|l| l.stream == LogStream::Host && l.text.contains("trapped"))
        .collect();
    assert!(
        !host_lines.is_empty(),
        "the trap is logged with the component's name"
    );
}

#[tokio::test]
async fn an_infinite_loop_hits_the_deadline_while_others_are_served() {
    let c = load("probe", "[limits]\ntimeout = \"500ms\"\n");
    let looping = tokio::spawn({
        let c = c.clone();
        async move { call(&c, "/loop").await }
    });
    // Meanwhile, on the same thread, other requests still complete.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    assert_eq!(call(&c, "/").await.0, 200);
    assert!(started.elapsed() < Duration::from_millis(400));
    let (status, text) = looping.await.expect("join");
    assert_eq!(status, 504);
    assert!(text.contains("deadline"), "{text}");
}

#[tokio::test]
async fn a_sleeping_guest_is_also_stopped_at_the_deadline() {
    let c = load("probe", "[limits]\ntimeout = \"300ms\"\n");
    let (status, _) = call(&c, "/sleep?ms=5000").await;
    assert_eq!(status, 504);
}

#[tokio::test]
async fn a_memory_bomb_is_stopped_at_the_limit() {
    let c = load("probe", "[limits]\nmemory = \"16MiB\"\n");
    let (status, text) = call(&c, "/alloc").await;
    assert_eq!(status, 500);
    assert!(text.contains("memory limit of 16MiB"), "{text}");
    assert_eq!(call(&c, "/").await.0, 200);
}

#[tokio::test]
async fn the_cpu_budget_stops_a_busy_guest() {
    let c = load("probe", "[limits]\nfuel = 5000000\ntimeout = \"30s\"\n");
    let (status, text) = call(&c, "/loop").await;
    assert_eq!(status, 500);
    assert!(text.contains("CPU budget"), "{text}");
    assert_eq!(call(&c, "/").await.0, 200);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let c = load("probe", "[limits]\nmax_body = \"1KiB\"\n");
    let small = request("/echo", body(vec![b'a'; 512]));
    assert_eq!(call_with(&c, small).await, (200, "a".repeat(512)));

    let declared = request("/echo", body(vec![b'a'; 4096]));
    assert_eq!(call_with(&c, declared).await.0, 413);

    // A streamed body without a length is cut off when it passes the limit:
    // with 413 if the guest had not answered yet, else by aborting the
    // response it was streaming back.
    let chunks = (0..8).map(|_| Ok::<_, HttpError>(Frame::data(Bytes::from(vec![b'b'; 512]))));
    let streamed = StreamBody::new(futures::stream::iter(chunks)).boxed_unsync();
    let resp = c.handle(request("/echo", streamed), false).await;
    if resp.status().as_u16() != 413 {
        let collected = resp.into_body().collect().await;
        assert!(
            collected.is_err(),
            "an over-limit stream must not be echoed whole"
        );
    }
}

#[tokio::test]
async fn excess_concurrency_gets_503_with_retry_after() {
    let c = load("probe", "[limits]\nmax_concurrency = 1\n");
    let busy = tokio::spawn({
        let c = c.clone();
        async move { call(&c, "/sleep?ms=400").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = c.handle(request("/", body(Bytes::new())), false).await;
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(busy.await.expect("join"), (200, "slept".into()));
    assert_eq!(call(&c, "/").await.0, 200);
}

#[tokio::test]
async fn only_granted_env_and_no_host_files() {
    // SAFETY: set before any component reads it; tests only read this variable.
    unsafe { std::env::set_var("AETHER_TEST_GRANTED", "from-host") };
    let c = load(
        "probe",
        "[env]\nGREETING = \"hi\"\n[capabilities]\nenv_from_host = [\"AETHER_TEST_GRANTED\"]\n",
    );
    assert_eq!(call(&c, "/env?name=GREETING").await, (200, "hi".into()));
    assert_eq!(
        call(&c, "/env?name=AETHER_TEST_GRANTED").await,
        (200, "from-host".into())
    );
    assert_eq!(call(&c, "/env?name=PATH").await.0, 404);
    assert_eq!(call(&c, "/env?name=HOME").await.0, 404);
    let (status, _) = call(&c, "/file?path=/etc/passwd").await;
    assert_eq!(status, 500, "no host directory is visible");
}

async fn local_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("upstream"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn outbound_http_only_to_listed_hosts() {
    let allowed = local_server().await;
    let other = local_server().await;
    let c = load(
        "probe",
        &format!(
            "[capabilities]\noutbound_http = [\"127.0.0.1:{}\"]\n",
            allowed.port()
        ),
    );
    assert_eq!(
        call(
            &c,
            &format!("/fetch?url=http://127.0.0.1:{}/", allowed.port())
        )
        .await,
        (200, "status=200".into())
    );
    let (status, text) = call(
        &c,
        &format!("/fetch?url=http://127.0.0.1:{}/", other.port()),
    )
    .await;
    assert_eq!(status, 502);
    assert!(text.contains("HttpRequestDenied"), "{text}");

    let none = load("probe", "");
    let (status, text) = call(
        &none,
        &format!("/fetch?url=http://127.0.0.1:{}/", allowed.port()),
    )
    .await;
    assert_eq!(status, 502);
    assert!(text.contains("HttpRequestDenied"), "{text}");
}

#[tokio::test]
async fn stdout_and_stderr_are_captured_per_component() {
    let c = load("probe", "");
    assert_eq!(call(&c, "/log").await.0, 200);
    let lines = c.logs().tail(20);
    assert!(
        lines
            .iter()
            .any(|l| l.stream == LogStream::Stdout && l.text == "probe stdout line")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.stream == LogStream::Stderr && l.text == "probe stderr line")
    );
}

// ---------------------------------------------------------------------------
// wasi:keyvalue
// ---------------------------------------------------------------------------

/// An in-memory backend: one map for every bucket, one lock for everything
/// (so its atomics are trivially atomic).
#[derive(Default)]
struct MemoryKv {
    map: std::sync::Mutex<std::collections::BTreeMap<(String, String), Vec<u8>>>,
}

impl MemoryKv {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut std::collections::BTreeMap<(String, String), Vec<u8>>) -> T,
    ) -> T {
        f(&mut self.map.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn buckets(&self) -> Vec<String> {
        let mut b: Vec<String> = self.with(|m| m.keys().map(|(b, _)| b.clone()).collect());
        b.dedup();
        b
    }
}

fn ready<'a, T: Send + 'a>(v: Result<T, KeyValueError>) -> KvFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl KeyValueBackend for MemoryKv {
    fn get<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        ready(Ok(
            self.with(|m| m.get(&(bucket.into(), key.into())).cloned())
        ))
    }

    fn set<'a>(&'a self, bucket: &'a str, key: &'a str, value: Vec<u8>) -> KvFuture<'a, ()> {
        self.with(|m| m.insert((bucket.into(), key.into()), value));
        ready(Ok(()))
    }

    fn delete<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, ()> {
        self.with(|m| m.remove(&(bucket.into(), key.into())));
        ready(Ok(()))
    }

    fn list_keys<'a>(
        &'a self,
        bucket: &'a str,
        cursor: Option<u64>,
        limit: usize,
    ) -> KvFuture<'a, KeyPage> {
        let keys: Vec<String> = self.with(|m| {
            m.keys()
                .filter(|(b, _)| b == bucket)
                .map(|(_, k)| k.clone())
                .collect()
        });
        let skip = cursor.unwrap_or(0) as usize;
        let page: Vec<String> = keys.iter().skip(skip).take(limit).cloned().collect();
        let next = skip + page.len();
        ready(Ok(KeyPage {
            cursor: (next < keys.len()).then_some(next as u64),
            keys: page,
        }))
    }

    fn increment<'a>(&'a self, bucket: &'a str, key: &'a str, delta: u64) -> KvFuture<'a, u64> {
        ready(self.with(|m| {
            let slot = (bucket.to_string(), key.to_string());
            let next = aether_runtime::keyvalue::increment_counter(
                key,
                m.get(&slot).map(Vec::as_slice),
                delta,
            )?;
            m.insert(slot, next.to_string().into_bytes());
            Ok(next)
        }))
    }

    fn compare_and_swap<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: Vec<u8>,
    ) -> KvFuture<'a, CasOutcome> {
        ready(Ok(self.with(|m| {
            let slot = (bucket.to_string(), key.to_string());
            let current = m.get(&slot).cloned();
            if current.as_deref() == expected {
                m.insert(slot, new);
                CasOutcome::Swapped
            } else {
                CasOutcome::Mismatch { current }
            }
        })))
    }
}

/// A runtime whose `wasi:keyvalue` is backed by `kv`.
fn kv_runtime(kv: Arc<MemoryKv>) -> Runtime {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("runtime-compile-cache");
    Runtime::new(RuntimeConfig {
        cache_dir: Some(cache),
        max_instances: 8,
        keyvalue: Some(kv),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

fn kv_counter(rt: &Runtime, grants: &str) -> LoadedComponent {
    let text = format!(
        "name = \"kv-counter\"\ncomponent = \"kv-counter.wasm\"\n[http]\nroutes = [\"/\"]\n\
         [capabilities]\nkeyvalue = [{grants}]\n"
    );
    let m = aether_manifest::parse(&text, "Aetherfile").expect("valid manifest");
    rt.load(&m, &fixture("kv-counter"))
        .expect("kv-counter loads")
}

async fn kv_post(c: &LoadedComponent, path: &str, value: &str) -> (u16, String) {
    let req = hyper::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("host", "localhost")
        .body(body(value.to_string()))
        .expect("request");
    call_with(c, req).await
}

fn ok(text: &str) -> (u16, String) {
    (200, text.to_string())
}

#[tokio::test]
async fn keyvalue_store_atomics_and_batch_in_a_granted_bucket() {
    let kv = Arc::new(MemoryKv::default());
    let rt = kv_runtime(kv.clone());
    let c = kv_counter(&rt, "\"counters\", \"big\"");

    assert_eq!(kv_post(&c, "/set?key=greeting", "hello").await, ok("ok"));
    assert_eq!(call(&c, "/get?key=greeting").await, ok("hello"));
    assert_eq!(call(&c, "/get?key=nope").await, (404, "absent".into()));
    assert_eq!(call(&c, "/exists?key=greeting").await, ok("true"));
    assert_eq!(call(&c, "/delete?key=greeting").await, ok("ok"));
    assert_eq!(call(&c, "/exists?key=greeting").await, ok("false"));

    for expected in ["1", "2", "3"] {
        assert_eq!(call(&c, "/incr?key=hits").await, ok(expected));
    }
    assert_eq!(call(&c, "/incr?key=hits&by=10").await, ok("13"));
    assert_eq!(call(&c, "/get?key=hits").await, ok("13"));
    kv_post(&c, "/set?key=word", "twelve").await;
    let (status, text) = call(&c, "/incr?key=word").await;
    assert_eq!(status, 500, "{text}");
    assert!(
        text.contains("`word`") && text.contains("not a decimal"),
        "{text}"
    );

    assert_eq!(call(&c, "/set-many?x=1&y=2").await, ok("ok"));
    assert_eq!(call(&c, "/many?keys=x,y,z").await, ok("x=1\ny=2\nz absent"));
    assert_eq!(call(&c, "/keys").await, ok("hits\nword\nx\ny"));
    assert_eq!(call(&c, "/delete-many?keys=x,y,word").await, ok("ok"));
    assert_eq!(call(&c, "/keys").await, ok("hits"));

    // Listing follows the cursor across pages.
    kv.with(|m| {
        for i in 0..2500 {
            m.insert(("app:big".into(), format!("k{i:05}")), vec![b'v']);
        }
    });
    let (status, text) = call(&c, "/keys?bucket=big").await;
    assert_eq!(status, 200);
    assert_eq!(text.lines().count(), 2500);

    // The component's buckets are lattice buckets under `app:`.
    assert_eq!(kv.buckets(), ["app:big", "app:counters"]);
}

#[tokio::test]
async fn keyvalue_buckets_not_granted_are_refused_and_logged() {
    let kv = Arc::new(MemoryKv::default());
    let rt = kv_runtime(kv.clone());
    let c = kv_counter(&rt, "\"counters\"");
    assert_eq!(
        call(&c, "/get?key=a&bucket=secret").await,
        (403, "access-denied: bucket `secret`".into())
    );
    let logs: Vec<String> = c.logs().tail(10).into_iter().map(|l| l.text).collect();
    assert!(
        logs.iter().any(|l| l.contains("`secret`")
            && l.contains("capabilities.keyvalue")
            && l.contains("`counters`")),
        "{logs:?}"
    );

    // Nothing granted at all: even `counters` is refused.
    let none = kv_counter(&rt, "");
    assert_eq!(
        call(&none, "/incr?key=a").await,
        (403, "access-denied: bucket `counters`".into())
    );
    assert!(kv.buckets().is_empty(), "{:?}", kv.buckets());
}

#[tokio::test]
async fn keyvalue_without_a_backend_loads_and_says_so() {
    // The shared runtime has no keyvalue backend.
    let c = kv_counter(runtime(), "\"counters\"");
    let (status, text) = call(&c, "/get?key=a").await;
    assert_eq!(status, 500, "{text}");
    assert!(
        text.contains("no state store") && text.contains("`counters`"),
        "{text}"
    );
    // Grants are checked first.
    assert_eq!(call(&c, "/get?key=a&bucket=other").await.0, 403);
}

#[tokio::test]
async fn a_min_zero_component_scales_to_zero_when_idle_and_the_next_request_activates_it() {
    let c = load(
        "hello",
        "[intent]\nreplicas = { min = 0, max = 2 }\nidle_timeout = \"1s\"\n",
    );
    assert_eq!(c.idle_timeout(), Some(std::time::Duration::from_secs(1)));
    assert_eq!(call(&c, "/").await.0, 200);
    assert!(!c.scale_to_zero_if_idle(), "not idle long enough yet");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(c.scale_to_zero_if_idle());
    assert!(!c.is_active());
    assert!(!c.scale_to_zero_if_idle(), "already at zero");
    // The first request waits for the activation and is served.
    assert_eq!(
        call(&c, "/").await,
        (200, "Hello from Aether!\n".to_string())
    );
    assert!(c.is_active());
    let log: Vec<String> = c.logs().tail(10).iter().map(|l| l.text.clone()).collect();
    assert!(log.iter().any(|l| l.contains("to zero after")), "{log:?}");
    assert!(
        log.iter()
            .any(|l| l.contains("activated") && l.contains("from zero")),
        "{log:?}"
    );

    // A component with a fixed replica count never scales to zero.
    let fixed = load("hello", "");
    assert_eq!(fixed.idle_timeout(), None);
    assert!(!fixed.scale_to_zero_if_idle());
}
