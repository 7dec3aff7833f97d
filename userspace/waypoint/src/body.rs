//! The body type of every request and response the waypoint handles, on
//! both sides: what it serves to clients and what its upstream client sends.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request and response bodies, streamed or in memory.
pub type Body = BoxBody<Bytes, BoxError>;
