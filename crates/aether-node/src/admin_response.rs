//! Responses of the admin API: the body type and JSON replies, shared by its handlers.

use aether_admin::types::ApiError;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde::Serialize;

/// The body of every admin API response.
pub(crate) type AdminBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// A complete body of `bytes`.
pub(crate) fn body(bytes: impl Into<Bytes>) -> AdminBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `value` as pretty JSON with `status`.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<AdminBody> {
    let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(body(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response<AdminBody> {
    json(
        status,
        &ApiError {
            error: message.into(),
        },
    )
}
