//! The edits HTTPRoute filters make: header modifiers, path rewrites and
//! redirect `Location`s. Pure work on strings and header maps, shared by
//! the router (request headers) and the waypoint (which applies the
//! response header modifier of a forwarded request with
//! [`apply_header_modifier`]).

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::model::{Header, HeaderModifier, PathModifier};

/// `ReplaceFullPath`.
pub const REPLACE_FULL_PATH: &str = "ReplaceFullPath";
/// `ReplacePrefixMatch`.
pub const REPLACE_PREFIX_MATCH: &str = "ReplacePrefixMatch";

/// Applies a RequestHeaderModifier/ResponseHeaderModifier to `headers`.
///
/// Spec (HTTPHeaderFilter): `set` overwrites the header, `add` appends to
/// it (`foo` + add `bar,baz` → the values `foo` and `bar,baz`, which
/// RFC 9110 combines as `foo,bar,baz`), `remove` drops it; names are
/// case-insensitive. Only one action per name is valid, so the order set,
/// add, remove does not matter. A name or value that is not valid HTTP is
/// skipped.
pub fn apply_header_modifier(headers: &mut HeaderMap, modifier: &HeaderModifier) {
    let valid = |header: &Header| {
        Some((
            HeaderName::from_bytes(header.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(header.value.as_bytes()).ok()?,
        ))
    };
    for (name, value) in modifier.set.iter().filter_map(valid) {
        headers.insert(name, value);
    }
    for (name, value) in modifier.add.iter().filter_map(valid) {
        headers.append(name, value);
    }
    for name in &modifier.remove {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
}

/// One modifier doing what `first` then `second` do (rule-level then
/// backend-level ResponseHeaderModifier).
pub fn merge_header_modifiers(first: &HeaderModifier, second: &HeaderModifier) -> HeaderModifier {
    HeaderModifier {
        set: [&first.set[..], &second.set].concat(),
        add: [&first.add[..], &second.add].concat(),
        remove: [&first.remove[..], &second.remove].concat(),
    }
}

/// A PathPrefix value without its trailing `/`: the spec ignores it, and
/// `/` itself becomes `""`, the prefix of every path.
pub fn significant_prefix(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// True when `path` starts with `prefix` element by element (spec,
/// PathPrefix): `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`.
pub fn has_path_prefix(path: &str, prefix: &str) -> bool {
    let prefix = significant_prefix(prefix);
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The path after a URLRewrite or RequestRedirect path modifier.
/// `matched_prefix` is the rule's PathPrefix match (ReplacePrefixMatch is
/// only valid with one; without it the whole path counts as the prefix).
///
/// Spec (HTTPPathModifier, ReplacePrefixMatch): the prefix matches whole
/// path elements and trailing slashes are ignored, e.g. `/foo/bar` with
/// prefix `/foo` and replacement `/xyz` → `/xyz/bar`; with replacement
/// `""` or `/` → `/bar`; `/foo/` with `/xyz` → `/xyz/`.
pub fn rewrite_path(path: &str, modifier: &PathModifier, matched_prefix: Option<&str>) -> String {
    if modifier.kind == REPLACE_FULL_PATH {
        return modifier
            .replace_full_path
            .clone()
            .unwrap_or_else(|| "/".into());
    }
    let replacement = modifier.replace_prefix_match.as_deref().unwrap_or("");
    let rest = match matched_prefix {
        Some(prefix) if has_path_prefix(path, prefix) => &path[significant_prefix(prefix).len()..],
        _ => "",
    };
    let rewritten = format!("{}{rest}", significant_prefix(replacement));
    if rewritten.starts_with('/') {
        rewritten
    } else {
        format!("/{rewritten}")
    }
}

/// The host part of a Host header, without its port (`[::1]:80` → `[::1]`).
pub fn host_without_port(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(rest) => rest.find(']').map_or(host, |end| &host[..end + 2]),
        None => host.split(':').next().unwrap_or(host),
    }
}

/// A redirect target, before it becomes a `Location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl Location<'_> {
    /// `scheme://host[:port]path[?query]`; per spec (HTTPRequestRedirectFilter
    /// port) the port is left out for http on 80 and https on 443.
    pub fn render(&self) -> String {
        let default_port = matches!((self.scheme, self.port), ("http", 80) | ("https", 443));
        let port = if default_port {
            String::new()
        } else {
            format!(":{}", self.port)
        };
        let query = self.query.map(|q| format!("?{q}")).unwrap_or_default();
        format!("{}://{}{port}{}{query}", self.scheme, self.host, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{header_map, header_pairs};

    fn header(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }

    /// A header's values combined as RFC 9110 says.
    fn combined(headers: &HeaderMap, name: &str) -> String {
        let values: Vec<_> = headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        values.join(",")
    }

    #[test]
    fn header_modifier_follows_the_spec_examples() {
        let mut request = header_map(&[
            ("my-header", "foo"),
            ("my-header2", "bar"),
            ("x-dup", "1"),
            ("x-dup", "2"),
        ]);
        let modifier = HeaderModifier {
            set: vec![
                header("My-Header", "bar"),
                header("x-dup", "3"),
                header("X-New", "n"),
            ],
            add: vec![header("My-Header2", "baz,qux"), header("x-added", "a")],
            remove: vec!["X-NEW".into()],
        };
        apply_header_modifier(&mut request, &modifier);
        assert_eq!(combined(&request, "my-header2"), "bar,baz,qux");
        assert_eq!(
            header_pairs(&request),
            header_pairs(&header_map(&[
                ("my-header", "bar"),
                ("my-header2", "bar"),
                ("my-header2", "baz,qux"),
                ("x-dup", "3"),
                ("x-added", "a")
            ]))
        );
    }

    #[test]
    fn header_modifier_sets_adds_and_removes_response_headers() {
        let mut headers = header_map(&[("x-set", "old"), ("x-add", "one"), ("x-gone", "bye")]);
        apply_header_modifier(
            &mut headers,
            &HeaderModifier {
                set: vec![header("X-Set", "new"), header("x-new", "n")],
                add: vec![header("x-add", "two")],
                remove: vec!["X-Gone".into()],
            },
        );
        assert_eq!(headers["x-set"], "new");
        assert_eq!(headers["x-new"], "n");
        let added: Vec<_> = headers.get_all("x-add").iter().collect();
        assert_eq!(added, ["one", "two"]);
        assert!(!headers.contains_key("x-gone"));
    }

    #[test]
    fn header_modifier_skips_invalid_names_and_values() {
        let mut headers = header_map(&[("x-a", "1"), ("x-b", "2")]);
        apply_header_modifier(
            &mut headers,
            &HeaderModifier {
                set: vec![header("bad name", "v"), header("x-a", "bad\nvalue")],
                add: vec![header("x-b", "bad\rvalue"), header("(bad)", "v")],
                remove: vec!["bad name".into()],
            },
        );
        assert_eq!(
            header_pairs(&headers),
            header_pairs(&header_map(&[("x-a", "1"), ("x-b", "2")]))
        );
    }

    #[test]
    fn merged_modifiers_apply_the_second_after_the_first() {
        let rule = HeaderModifier {
            set: vec![header("x-a", "rule")],
            ..Default::default()
        };
        let backend = HeaderModifier {
            set: vec![header("x-a", "backend")],
            remove: vec!["x-b".into()],
            ..Default::default()
        };
        let mut response = header_map(&[("x-b", "1")]);
        apply_header_modifier(&mut response, &merge_header_modifiers(&rule, &backend));
        assert_eq!(header_pairs(&response), [("x-a".into(), "backend".into())]);
    }

    #[test]
    fn path_prefix_matches_whole_elements() {
        assert!(has_path_prefix("/foo", "/foo"));
        assert!(has_path_prefix("/foo/", "/foo"));
        assert!(has_path_prefix("/foo/bar", "/foo"));
        assert!(has_path_prefix("/foo/bar", "/foo/"));
        assert!(has_path_prefix("/foo", "/foo/"));
        assert!(!has_path_prefix("/foobar", "/foo"));
        assert!(has_path_prefix("/anything", "/"));
        assert!(has_path_prefix("/", "/"));
    }

    #[test]
    fn replace_prefix_match_follows_the_spec_table() {
        let table = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/bar", "/", "/xyz", "/xyz/bar"),
        ];
        for (path, prefix, replacement, expected) in table {
            let modifier = PathModifier {
                kind: REPLACE_PREFIX_MATCH.into(),
                replace_full_path: None,
                replace_prefix_match: Some(replacement.into()),
            };
            assert_eq!(
                rewrite_path(path, &modifier, Some(prefix)),
                expected,
                "{path} {prefix} {replacement}"
            );
        }
    }

    #[test]
    fn replace_full_path_replaces_everything() {
        let modifier = PathModifier {
            kind: REPLACE_FULL_PATH.into(),
            replace_full_path: Some("/new".into()),
            replace_prefix_match: None,
        };
        assert_eq!(
            rewrite_path("/old/deep/path", &modifier, Some("/old")),
            "/new"
        );
    }

    #[test]
    fn location_omits_default_ports() {
        let location = |scheme, port| {
            Location {
                scheme,
                host: "example.com",
                port,
                path: "/p",
                query: Some("a=1"),
            }
            .render()
        };
        assert_eq!(location("http", 80), "http://example.com/p?a=1");
        assert_eq!(location("https", 443), "https://example.com/p?a=1");
        assert_eq!(location("http", 8080), "http://example.com:8080/p?a=1");
        assert_eq!(location("https", 80), "https://example.com:80/p?a=1");
    }

    #[test]
    fn host_header_port_is_dropped() {
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[fd00::1]:80"), "[fd00::1]");
        assert_eq!(host_without_port("[fd00::1]"), "[fd00::1]");
    }
}
