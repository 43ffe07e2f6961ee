//! The serving side of forwarding: requests peers forward to this node, served as the
//! ingress serves its own, and their responses written back.

use std::sync::Arc;

use aether_runtime::{ResponseBody, host_response};
use aether_transport::{IncomingStream, SendStream};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Body;

use super::wire::{
    COMPONENT_HEADER, decode_request_head, encode_response_head, pump, read_head, strip_hop_by_hop,
};
use super::{
    CHANNEL_DIRECT, CHANNEL_HTTP, COALESCE_MAX, COALESCE_WAIT, Forwarder, HEAD_TIMEOUT, stream_body,
};
use crate::deployments::Deployments;
use crate::schedule::short;

impl Forwarder {
    /// Serves the requests peers forward to this node, on the transport's
    /// tasks (no queue in between).
    pub(crate) fn serve(self: &Arc<Self>, deployments: Arc<Deployments>) {
        let _ = self.deployments.set(deployments.clone());
        let this = self.clone();
        self.endpoint.serve_streams(
            CHANNEL_DIRECT,
            Arc::new(move |mut stream| {
                let this = this.clone();
                Box::pin(async move {
                    let reply: String = this
                        .direct_ports
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .map(|a| format!("{a}\n"))
                        .collect();
                    let _ = stream.send.write_all(reply.as_bytes()).await;
                    let _ = stream.send.finish();
                })
            }),
        );
        let this = self.clone();
        self.endpoint.serve_streams(
            CHANNEL_HTTP,
            Arc::new(move |stream| {
                let this = this.clone();
                let deployments = deployments.clone();
                Box::pin(async move { this.serve_one(stream, &deployments).await })
            }),
        );
    }

    pub(super) async fn serve_one(&self, stream: IncomingStream, deployments: &Deployments) {
        let IncomingStream {
            from,
            send,
            mut recv,
            ..
        } = stream;
        let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut recv)).await {
            Ok(Ok(head)) => head,
            Ok(Err(e)) => {
                tracing::debug!(peer = %short(&from), "forwarded request dropped: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %short(&from), "forwarded request head timed out");
                return;
            }
        };
        let resp = match decode_request_head(&head) {
            None => host_response(
                StatusCode::BAD_REQUEST,
                "malformed forwarded request\n".into(),
            ),
            Some((method, path, headers)) => match path.parse::<http::Uri>() {
                Err(_) => host_response(StatusCode::BAD_REQUEST, "malformed path\n".into()),
                Ok(uri) => {
                    self.metrics.served.inc();
                    let mut req = Request::new(stream_body(recv, None));
                    *req.method_mut() = method;
                    *req.uri_mut() = uri;
                    *req.headers_mut() = headers;
                    let host = req
                        .headers()
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string);
                    // A request that came through a component's virtual address names it; any
                    // other is routed by host and path, as on the ingress.
                    let named = req
                        .headers()
                        .get(&COMPONENT_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let deployment = match named {
                        Some(name) => deployments.get(&name),
                        None => deployments.route(host.as_deref(), req.uri().path()),
                    };
                    req.headers_mut().remove(&COMPONENT_HEADER);
                    match deployment {
                        Some(d) => d.serve(req).await,
                        None => host_response(
                            StatusCode::NOT_FOUND,
                            format!("no component serves {}\n", req.uri().path()),
                        ),
                    }
                }
            },
        };
        respond(resp, send).await;
    }
}

/// Writes `resp` to `send`: head, then the body as it comes. The head goes
/// out together with the body frames ready within [`COALESCE_WAIT`] (and,
/// when that is all of it, the end of the stream), so a small response
/// takes one write instead of three.
async fn respond(resp: Response<ResponseBody>, mut send: SendStream) {
    let (parts, mut body) = resp.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    let head = encode_response_head(parts.status, &headers).unwrap_or_else(|| {
        encode_response_head(StatusCode::BAD_GATEWAY, &HeaderMap::new()).unwrap_or_default()
    });
    let mut chunks = vec![Bytes::from(head)];
    let mut size = 0;
    let mut ended = body.is_end_stream();
    let mut first = true;
    while !ended && size < COALESCE_MAX {
        let next = if first {
            first = false;
            tokio::time::timeout(COALESCE_WAIT, body.frame()).await.ok()
        } else {
            futures::FutureExt::now_or_never(body.frame())
        };
        match next {
            None => break,
            Some(None) => ended = true,
            Some(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    size += data.len();
                    chunks.push(data);
                }
            }
            Some(Some(Err(e))) => {
                tracing::debug!("forwarded response body: {e}");
                let _ = send.reset(aether_transport::STREAM_REFUSED.into());
                return;
            }
        }
    }
    if send.write_all_chunks(&mut chunks).await.is_err() {
        return;
    }
    if ended {
        let _ = send.finish();
        return;
    }
    if let Err(e) = pump(body, send).await {
        tracing::debug!("forwarded response body: {e}");
    }
}
