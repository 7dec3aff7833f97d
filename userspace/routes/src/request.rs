//! The request as routing sees it: the parts of an HTTP request head that
//! route matches test and that the router starts its edits from. The
//! waypoint fills it in from the request it received.

use http::HeaderMap;

/// The parts of a request routing reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Upper case, as sent.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// As received; an HTTP/2 request's `:authority` as `host`.
    pub headers: HeaderMap,
}
