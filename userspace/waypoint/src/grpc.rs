//! The waypoint's own answers to gRPC calls. A gRPC client reads a call's
//! outcome from `grpc-status`, which a plain HTTP error does not carry: a
//! 404 or 503 of the waypoint's own (no rule matches, no ready endpoint, a
//! timeout) reaches a gRPC call as a gRPC status instead, in a
//! "Trailers-Only" response (HTTP 200, `grpc-status` and `grpc-message` in
//! the headers, no body), as gRPC servers send errors.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    header::{HeaderValue, CONTENT_TYPE},
    HeaderMap, Response, StatusCode,
};

use crate::body::{Body, BoxError};

const GRPC_CONTENT_TYPE: &str = "application/grpc";

/// A gRPC call: its content type is `application/grpc`, alone or with a
/// `+proto`-style suffix.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .strip_prefix(GRPC_CONTENT_TYPE)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
        })
}

/// The gRPC status code a client makes of an HTTP status (gRPC's "HTTP to
/// gRPC Status Code Mapping"), but for 500, which the waypoint answers for
/// a rule's invalid backends: the GRPCRoute spec wants `UNAVAILABLE` there.
fn code(status: StatusCode) -> u32 {
    const INTERNAL: u32 = 13;
    const UNAUTHENTICATED: u32 = 16;
    const PERMISSION_DENIED: u32 = 7;
    const UNIMPLEMENTED: u32 = 12;
    const UNAVAILABLE: u32 = 14;
    const UNKNOWN: u32 = 2;
    match status.as_u16() {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 500 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// `response`, the waypoint's own text answer, as a gRPC status: its text
/// becomes `grpc-message` (percent-encoded, as the gRPC spec asks).
pub async fn status_response(response: Response<Body>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let text = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let mut answer = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| -> BoxError { match never {} })
            .boxed(),
    );
    let headers = answer.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(GRPC_CONTENT_TYPE));
    headers.insert("grpc-status", HeaderValue::from(code(parts.status)));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(&text)) {
        headers.insert("grpc-message", message);
    }
    answer
}

/// gRPC's `grpc-message` encoding: bytes outside printable ASCII, and `%`,
/// as `%XX`.
fn percent_encode(text: &[u8]) -> String {
    let mut encoded = String::with_capacity(text.len());
    for &byte in text {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use hyper::body::Body as _;

    use super::*;

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            is_grpc(&headers)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn http_statuses_map_to_the_codes_grpc_clients_expect() {
        let code = |status: u16| code(StatusCode::from_u16(status).unwrap());
        assert_eq!(code(404), 12, "no rule matches: UNIMPLEMENTED");
        assert_eq!(code(500), 14, "invalid backend: UNAVAILABLE (GRPCRoute)");
        assert_eq!(code(503), 14);
        assert_eq!(code(504), 14);
        assert_eq!(code(400), 13);
        assert_eq!(code(418), 2);
    }

    #[tokio::test]
    async fn a_text_answer_becomes_a_trailers_only_status() {
        let mut text = Response::new(
            Full::new(Bytes::from("no route rule of shop/web:80 matches: 100%"))
                .map_err(|never| -> BoxError { match never {} })
                .boxed(),
        );
        *text.status_mut() = StatusCode::NOT_FOUND;
        let answer = status_response(text).await;
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()["grpc-status"], "12");
        assert_eq!(
            answer.headers()["grpc-message"],
            "no route rule of shop/web:80 matches: 100%25"
        );
        assert_eq!(answer.headers()[CONTENT_TYPE], "application/grpc");
        assert!(answer.into_body().is_end_stream());
    }
}
