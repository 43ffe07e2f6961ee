//! Helpers shared by the daemon's multi-process tests.
#![allow(dead_code)]

pub mod cluster;
pub mod http;
pub mod netns;
pub mod partition;

use std::io::{BufRead as _, BufReader};
use std::sync::{Arc, Mutex};

/// Collects everything a pipe yields into a shared string, on its own thread.
pub fn capture(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => sink
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&line),
            }
        }
    });
    out
}

/// Runs a future to completion on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}
