//! Per-component capture of stdout and stderr.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::sync::broadcast;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Which stream a log line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// The component's stdout.
    Stdout,
    /// The component's stderr.
    Stderr,
    /// A message from the host about the component (traps, limits).
    Host,
}

impl LogStream {
    /// Short lowercase name: `stdout`, `stderr` or `host`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Host => "host",
        }
    }
}

/// One captured line.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Sequence number, increasing per component, for `--follow` resumption.
    pub seq: u64,
    /// When the line was completed.
    pub time: SystemTime,
    /// Where it came from.
    pub stream: LogStream,
    /// The text, without the trailing newline (lossy UTF-8).
    pub text: String,
}

/// Longest line kept; longer writes are split.
const MAX_LINE: usize = 16 * 1024;

/// A bounded ring of a component's recent output, with live followers.
///
/// Cheap to clone. Writes never block the guest: when the ring is full the
/// oldest lines are dropped, and slow followers miss lines rather than stall.
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<SinkInner>,
}

struct SinkInner {
    component: String,
    capacity: usize,
    state: Mutex<SinkState>,
    live: broadcast::Sender<LogLine>,
}

struct SinkState {
    next_seq: u64,
    lines: VecDeque<LogLine>,
}

impl LogSink {
    /// A sink for `component` keeping at most `capacity` lines.
    pub fn new(component: &str, capacity: usize) -> Self {
        let (live, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(SinkInner {
                component: component.to_string(),
                capacity: capacity.max(1),
                state: Mutex::new(SinkState {
                    next_seq: 0,
                    lines: VecDeque::new(),
                }),
                live,
            }),
        }
    }

    /// Appends one line.
    pub fn push(&self, stream: LogStream, text: String) {
        let line = {
            let mut state = match self.inner.state.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            let line = LogLine {
                seq: state.next_seq,
                time: SystemTime::now(),
                stream,
                text,
            };
            state.next_seq += 1;
            if state.lines.len() == self.inner.capacity {
                state.lines.pop_front();
            }
            state.lines.push_back(line.clone());
            line
        };
        tracing::debug!(component = %self.inner.component, stream = stream.as_str(), "{}", line.text);
        let _ = self.inner.live.send(line);
    }

    /// The last `n` lines kept, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let state = match self.inner.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let skip = state.lines.len().saturating_sub(n);
        state.lines.iter().skip(skip).cloned().collect()
    }

    /// Subscribes to lines written from now on.
    pub fn follow(&self) -> broadcast::Receiver<LogLine> {
        self.inner.live.subscribe()
    }

    pub(crate) fn writer(&self, stream: LogStream) -> LineWriter {
        LineWriter {
            sink: self.clone(),
            stream,
            partial: Vec::new(),
        }
    }
}

/// Splits a byte stream into lines pushed to a [`LogSink`].
pub(crate) struct LineWriter {
    sink: LogSink,
    stream: LogStream,
    partial: Vec<u8>,
}

impl LineWriter {
    fn write_bytes(&mut self, mut bytes: &[u8]) {
        while let Some(pos) = bytes.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&bytes[..pos]);
            self.flush_line();
            bytes = &bytes[pos + 1..];
        }
        self.partial.extend_from_slice(bytes);
        while self.partial.len() > MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            self.flush_line();
            self.partial = rest;
        }
    }

    fn flush_line(&mut self) {
        let mut text = String::from_utf8_lossy(&self.partial).into_owned();
        if text.ends_with('\r') {
            text.pop();
        }
        self.partial.clear();
        self.sink.push(self.stream, text);
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            self.flush_line();
        }
    }
}

/// The stdout or stderr handed to WASI for one instance.
pub(crate) struct CapturedStdio {
    pub(crate) sink: LogSink,
    pub(crate) stream: LogStream,
}

impl IsTerminal for CapturedStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedStdio {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.sink.writer(self.stream))
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.sink.writer(self.stream))
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
