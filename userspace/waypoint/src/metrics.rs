//! What the waypoint tells about itself on `/metrics`, and `/readyz` (ready
//! once the agent's config has been read), served by `zerohop_telemetry`.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};
use zerohop_telemetry::Health;

use crate::{config::Routes, sniff::Reason};

/// A sample's labels, in the order exposed.
type Labels = Vec<(&'static str, String)>;

/// What answered a request: the route rule that forwarded it
/// (`namespace/name#rule`) and its backend Service (`namespace/name`);
/// both empty when the waypoint answered itself. Shared with the router's
/// decision: cloned per request without copying the names.
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Answerer {
    pub route: Arc<str>,
    pub backend: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    #[prometheus(flatten)]
    answerer: Answerer,
    code: u16,
}

/// Request durations from 100 µs to about 3.3 s, doubling.
#[derive(Clone)]
struct Buckets;

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
    }
}

/// The waypoint's metrics; cheap to clone, every clone counts into the same.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    routes: Routes,
    requests: Family<RequestLabels, Counter>,
    duration: Family<Answerer, Histogram, Buckets>,
    upstream_errors: Family<Labels, Counter>,
    passthrough: Family<Labels, Counter>,
    connections: Family<Labels, Gauge>,
    mirror_body_too_large: Counter,
    retries: Family<Labels, Counter>,
    retry_body_too_large: Counter,
}

/// Why an upstream exchange failed.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamError {
    /// No connection (answered 503).
    Connect,
    /// `timeouts.backendRequest` expired (504).
    Timeout,
    /// Anything else (502).
    Other,
}

/// Why an upstream attempt was retried.
#[derive(Debug, Clone, Copy)]
pub enum RetryReason {
    /// It answered a status the rule's `retry.codes` lists.
    Status,
    /// It failed.
    Failed(UpstreamError),
}

impl UpstreamError {
    fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Other => "other",
        }
    }
}

/// What a connection turned out to be.
#[derive(Debug, Clone, Copy)]
pub enum ConnectionKind {
    Http,
    Passthrough,
}

impl Metrics {
    /// Metrics whose readiness follows `routes`.
    pub fn new(routes: Routes) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register(
            "zerohop_waypoint_requests",
            "Requests answered, by the route rule that forwarded them (namespace/name#rule), \
             its backend Service (namespace/name), both empty when the waypoint answered \
             itself, and status code.",
            requests.clone(),
        );
        let duration = Family::new_with_constructor(Buckets);
        registry.register_with_unit(
            "zerohop_waypoint_request_duration",
            "Time from a request's head to its response's head, by route rule and backend.",
            Unit::Seconds,
            duration.clone(),
        );
        let upstream_errors = Family::default();
        registry.register(
            "zerohop_waypoint_upstream_errors",
            "Upstream exchanges that failed, by kind: connect, timeout or other.",
            upstream_errors.clone(),
        );
        let passthrough = Family::default();
        registry.register(
            "zerohop_waypoint_passthrough_connections",
            "Connections that did not speak HTTP, passed through to an endpoint, by reason: \
             tls, not_http or silent.",
            passthrough.clone(),
        );
        let connections = Family::default();
        registry.register(
            "zerohop_waypoint_connections",
            "Open client connections, by kind: http or passthrough.",
            connections.clone(),
        );
        let mirror_body_too_large = Counter::default();
        registry.register(
            "zerohop_waypoint_mirror_body_too_large",
            "Requests of a route with a RequestMirror that were not mirrored: their body was \
             longer than --replay-body-limit.",
            mirror_body_too_large.clone(),
        );
        let retries = Family::default();
        registry.register(
            "zerohop_waypoint_retries",
            "Upstream attempts retried, by route rule (namespace/name#rule) and reason: \
             status (a code the rule's retry lists), connect, timeout or other.",
            retries.clone(),
        );
        let retry_body_too_large = Counter::default();
        registry.register(
            "zerohop_waypoint_retry_body_too_large",
            "Requests of a route rule with a retry policy that could not be retried: their \
             body was longer than --replay-body-limit.",
            retry_body_too_large.clone(),
        );
        Metrics(Arc::new(Inner {
            registry,
            routes,
            requests,
            duration,
            upstream_errors,
            passthrough,
            connections,
            mirror_body_too_large,
            retries,
            retry_body_too_large,
        }))
    }

    /// One answered request.
    pub fn request(&self, answerer: Answerer, status: u16, took: Duration) {
        let inner = &self.0;
        inner
            .duration
            .get_or_create(&answerer)
            .observe(took.as_secs_f64());
        let labels = RequestLabels {
            answerer,
            code: status,
        };
        inner.requests.get_or_create(&labels).inc();
    }

    pub fn upstream_error(&self, error: UpstreamError) {
        self.0
            .upstream_errors
            .get_or_create(&vec![("kind", error.as_str().to_owned())])
            .inc();
    }

    pub fn retry(&self, route: &str, reason: RetryReason) {
        let reason = match reason {
            RetryReason::Status => "status",
            RetryReason::Failed(error) => error.as_str(),
        };
        let labels = vec![("route", route.to_owned()), ("reason", reason.to_owned())];
        self.0.retries.get_or_create(&labels).inc();
    }

    pub fn retry_body_too_large(&self) {
        self.0.retry_body_too_large.inc();
    }

    pub fn passthrough(&self, reason: Reason) {
        self.0
            .passthrough
            .get_or_create(&vec![("reason", reason.as_str().to_owned())])
            .inc();
    }

    pub fn mirror_body_too_large(&self) {
        self.0.mirror_body_too_large.inc();
    }

    /// Counts an open connection of `kind` until the guard is dropped.
    pub fn connection(&self, kind: ConnectionKind) -> ConnectionGuard {
        let kind = match kind {
            ConnectionKind::Http => "http",
            ConnectionKind::Passthrough => "passthrough",
        };
        let gauge = self
            .0
            .connections
            .get_or_create(&vec![("kind", kind.to_owned())])
            .clone();
        gauge.inc();
        ConnectionGuard(gauge)
    }
}

/// An open connection, counted until dropped.
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Health for Metrics {
    fn not_ready(&self) -> Option<String> {
        (!self.0.routes.loaded()).then(|| "the agent's config has not been read yet".to_owned())
    }

    fn registry(&self) -> &Registry {
        &self.0.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_follow_what_happened() {
        let metrics = Metrics::new(Routes::default());
        let web = Answerer {
            route: "shop/web#0".into(),
            backend: "shop/web-v1".into(),
        };
        metrics.request(web.clone(), 200, Duration::from_millis(3));
        metrics.request(web, 200, Duration::from_millis(5));
        metrics.request(Answerer::default(), 404, Duration::from_micros(50));
        metrics.upstream_error(UpstreamError::Timeout);
        metrics.passthrough(Reason::Tls);
        let open = metrics.connection(ConnectionKind::Http);
        let _closed = metrics.connection(ConnectionKind::Passthrough);
        drop(_closed);
        let text = zerohop_telemetry::exposition(metrics.registry()).unwrap();
        for line in [
            "zerohop_waypoint_requests_total{route=\"shop/web#0\",backend=\"shop/web-v1\",code=\"200\"} 2",
            "zerohop_waypoint_requests_total{route=\"\",backend=\"\",code=\"404\"} 1",
            "zerohop_waypoint_request_duration_seconds_count{route=\"shop/web#0\",backend=\"shop/web-v1\"} 2",
            "zerohop_waypoint_upstream_errors_total{kind=\"timeout\"} 1",
            "zerohop_waypoint_passthrough_connections_total{reason=\"tls\"} 1",
            "zerohop_waypoint_connections{kind=\"http\"} 1",
            "zerohop_waypoint_connections{kind=\"passthrough\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        drop(open);
        assert_eq!(
            metrics.not_ready().as_deref(),
            Some("the agent's config has not been read yet")
        );
    }
}
