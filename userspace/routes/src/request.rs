//! The request as routing sees it: the parts of an HTTP request head that
//! route matches test and that the router starts its edits from. The
//! waypoint fills it in from the request it received.

/// The parts of a request routing reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Upper case, as sent.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// Names lower case; repeated names appear once per value.
    pub headers: Vec<(String, String)>,
}
