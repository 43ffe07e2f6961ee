//! Native baseline for the runtime benchmark: a hyper 1.x HTTP/1.1 server that answers
//! every request with 200 "Hello from Aether!\n" (the body of the wasm hello components).
//!
//! Usage: native-hello ADDR   (e.g. 127.0.0.1:18080)

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const BODY: &[u8] = b"Hello from Aether!\n";

async fn hello(_req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("static response is valid"))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .ok_or("usage: native-hello ADDR (e.g. 127.0.0.1:18080)")?
        .parse()?;
    let listener = TcpListener::bind(addr).await?;
    eprintln!("native-hello listening on http://{addr}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            if let Err(e) = http1::Builder::new().serve_connection(io, service_fn(hello)).await {
                if !e.is_incomplete_message() {
                    eprintln!("connection: {e}");
                }
            }
        });
    }
}
