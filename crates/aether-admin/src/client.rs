//! A small client for the admin API that signs every request.

use std::net::SocketAddr;

use aether_identity::SecretKey;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::auth;
use crate::types::ApiError;

/// Errors talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made.
    #[error(
        "cannot reach the node's admin API at {addr}: {source} (is `aether-d` or `alkahest up` \
         running? pass `--node ADDR` to choose another node)"
    )]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talking to the node at {addr}: {message}")]
    Http {
        /// The node.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
    /// The node answered with an error.
    #[error("node answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The node's explanation.
        message: String,
    },
    /// The answer was not the expected JSON.
    #[error("unexpected answer from the node: {0}")]
    Decode(String),
}

/// Signs and sends admin requests to one node.
#[derive(Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    key: SecretKey,
}

impl AdminClient {
    /// A client for the node whose admin API listens on `addr`.
    pub fn new(addr: SocketAddr, key: SecretKey) -> Self {
        Self { addr, key }
    }

    /// The node's admin address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one signed request and returns the raw response (for streams).
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: self.addr,
                source,
            })?;
        let http_err = |e: &dyn std::fmt::Display| ClientError::Http {
            addr: self.addr,
            message: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http_err(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path_and_query)
            .header(http::header::HOST, self.addr.to_string());
        for (name, value) in auth::sign(&self.key, method.as_str(), path_and_query, &body) {
            builder = builder.header(name, value);
        }
        let req = builder.body(Full::new(body)).map_err(|e| http_err(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| http_err(&e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api { status, message });
        }
        Ok(resp)
    }

    /// Sends a signed request and decodes a JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path_and_query, body).await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http {
                addr: self.addr,
                message: e.to_string(),
            })?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }
}
