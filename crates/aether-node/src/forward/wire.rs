//! The forwarding wire format: a request or response head (method or status, path, headers,
//! length-prefixed and bounded by [`MAX_HEAD`]), then the body as it comes; and the headers that
//! never cross a hop.

use aether_transport::{RecvStream, SendStream};
use bytes::Bytes;
use http::header::{self, HeaderName};
use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Body;

/// Largest head accepted, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;

pub(super) fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Drops hop-by-hop headers, including those the `Connection` header names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &[u8]) -> Option<()> {
    out.extend_from_slice(&u16::try_from(s.len()).ok()?.to_be_bytes());
    out.extend_from_slice(s);
    Some(())
}

pub(super) fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) -> Option<()> {
    out.extend_from_slice(&u16::try_from(headers.len()).ok()?.to_be_bytes());
    for (name, value) in headers {
        put_str(out, name.as_str().as_bytes())?;
        put_str(out, value.as_bytes())?;
    }
    Some(())
}

/// Frames a head: length prefix, then `body`. `None` over [`MAX_HEAD`].
pub(super) fn frame(body: Vec<u8>) -> Option<Vec<u8>> {
    if body.len() > MAX_HEAD {
        return None;
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Some(out)
}

pub(super) fn encode_request_head(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<Vec<u8>> {
    let mut out = vec![1u8];
    put_str(&mut out, method.as_str().as_bytes())?;
    put_str(&mut out, path.as_bytes())?;
    put_headers(&mut out, headers)?;
    frame(out)
}

pub(super) fn encode_response_head(status: StatusCode, headers: &HeaderMap) -> Option<Vec<u8>> {
    let mut out = vec![1u8];
    out.extend_from_slice(&status.as_u16().to_be_bytes());
    put_headers(&mut out, headers)?;
    frame(out)
}

/// A cursor over a head's bytes; every read is bounded.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
    fn headers(&mut self) -> Option<HeaderMap> {
        let count = usize::from(self.u16()?);
        // Each header takes at least 4 bytes: a count the head cannot hold
        // is refused before anything is allocated for it.
        if count > self.0.len() / 4 {
            return None;
        }
        let mut headers = HeaderMap::with_capacity(count.min(64));
        for _ in 0..count {
            let name = HeaderName::from_bytes(self.str()?).ok()?;
            let value = HeaderValue::from_bytes(self.str()?).ok()?;
            headers.append(name, value);
        }
        Some(headers)
    }
}

/// Names the component a forwarded request is for when it came through the component's
/// virtual address (which serves every path). Set only by the node that took the request;
/// removed from every request that arrives from a client.
pub(crate) const COMPONENT_HEADER: http::HeaderName =
    http::HeaderName::from_static("aether-component");

/// Decodes a request head (without its length prefix).
pub(super) fn decode_request_head(bytes: &[u8]) -> Option<(Method, String, HeaderMap)> {
    let mut r = Reader(bytes);
    if r.take(1)? != [1] {
        return None;
    }
    let method = Method::from_bytes(r.str()?).ok()?;
    let path = std::str::from_utf8(r.str()?).ok()?.to_string();
    if !path.starts_with('/') {
        return None;
    }
    let headers = r.headers()?;
    r.0.is_empty().then_some((method, path, headers))
}

/// Decodes a response head (without its length prefix).
pub(super) fn decode_response_head(bytes: &[u8]) -> Option<(StatusCode, HeaderMap)> {
    let mut r = Reader(bytes);
    if r.take(1)? != [1] {
        return None;
    }
    let status = StatusCode::from_u16(r.u16()?).ok()?;
    let headers = r.headers()?;
    r.0.is_empty().then_some((status, headers))
}

/// Reads one length-prefixed head from `recv`.
pub(super) async fn read_head(recv: &mut RecvStream) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(|e| format!("reading the head: {e}"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HEAD {
        return Err(format!(
            "head of {len} bytes is over the {MAX_HEAD}-byte bound"
        ));
    }
    let mut head = vec![0u8; len];
    recv.read_exact(&mut head)
        .await
        .map_err(|e| format!("reading the head: {e}"))?;
    Ok(head)
}

/// Copies `body` into `send` frame by frame and finishes it. Trailers are
/// not carried.
pub(super) async fn pump<B>(mut body: B, mut send: SendStream) -> Result<(), String>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the body: {e}"))?;
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            send.write_chunk(data)
                .await
                .map_err(|e| format!("sending the body: {e}"))?;
        }
    }
    let _ = send.finish();
    Ok(())
}

/// Sets `X-Forwarded-For` (appending the client), `X-Forwarded-Host` and
/// `X-Forwarded-Proto` (kept when an earlier proxy set them).
pub(super) fn set_forwarded(
    headers: &mut HeaderMap,
    client: Option<SocketAddr>,
    uri_host: Option<&str>,
) {
    if let Some(client) = client {
        let ip = client.ip().to_string();
        let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert("x-forwarded-for", v);
        }
    }
    if !headers.contains_key("x-forwarded-host") {
        let host = headers
            .get(header::HOST)
            .cloned()
            .or_else(|| uri_host.and_then(|h| HeaderValue::from_str(h).ok()));
        if let Some(host) = host {
            headers.insert("x-forwarded-host", host);
        }
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
}
