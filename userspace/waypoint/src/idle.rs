//! When a client connection has been idle too long: it counts its requests
//! in flight (from the request's head until its response's body is sent)
//! and tells when none has been for the limit: the header-read timeout
//! before the first request (an HTTP/2 client that never sends one), the
//! client idle timeout after.
//!
//! A request only updates the count: nothing is woken per request. The
//! watching future wakes at its deadlines and looks again (while requests
//! are in flight, once per limit), which costs a connection that serves
//! many requests far less than a wake-up for each.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{
    body::{Frame, SizeHint},
    Response,
};
use tokio::time::Instant;

use crate::body::{Body, BoxError};

#[derive(Debug, Clone, Copy)]
struct State {
    in_flight: usize,
    /// When the last request in flight ended (or the connection began).
    idle_since: Instant,
    /// Whether a request has come.
    served: bool,
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The requests in flight on one connection.
pub struct Activity(Shared);

impl Activity {
    pub fn new() -> Activity {
        Activity(Arc::new(Mutex::new(State {
            in_flight: 0,
            idle_since: Instant::now(),
            served: false,
        })))
    }

    /// Counts a request in flight until its response's body is done.
    pub fn begin(&self) -> InFlight {
        let mut state = lock(&self.0);
        state.in_flight += 1;
        state.served = true;
        drop(state);
        InFlight(self.0.clone())
    }

    /// Ends once no request has been in flight for the limit (`first`
    /// before any request came, `after` once one has; `None`: no limit).
    pub fn expired(
        &self,
        first: Option<Duration>,
        after: Option<Duration>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let shared = self.0.clone();
        async move {
            loop {
                let state = *lock(&shared);
                let limit = if state.served { after } else { first };
                let now = Instant::now();
                let deadline =
                    (limit.filter(|_| state.in_flight == 0)).map(|limit| state.idle_since + limit);
                if deadline.is_some_and(|deadline| now >= deadline) {
                    return;
                }
                // Look again at the deadline; while requests are in flight,
                // a limit from now (the end of the last one sets the next
                // deadline); before the first request, at least every
                // `after`, the limit once one has come.
                let busy = limit.filter(|_| state.in_flight > 0).map(|l| now + l);
                let unserved = after.filter(|_| !state.served).map(|a| now + a);
                match [deadline, busy, unserved].into_iter().flatten().min() {
                    Some(look_again) => tokio::time::sleep_until(look_again).await,
                    None => return std::future::pending().await,
                }
            }
        }
    }
}

/// A request in flight, counted until dropped.
pub struct InFlight(Shared);

impl InFlight {
    /// The response, whose body keeps the request in flight until sent.
    pub fn until_sent(self, response: Response<Body>) -> Response<Body> {
        response.map(|body| {
            Tracked {
                body,
                _in_flight: self,
            }
            .boxed()
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = lock(&self.0);
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
        }
    }
}

/// A response body and its request's [`InFlight`].
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_only_with_nothing_in_flight() {
        let activity = Activity::new();
        let second = Duration::from_secs(1);
        // Before any request: the first limit.
        let started = Instant::now();
        activity.expired(Some(second), None).await;
        assert_eq!(started.elapsed(), second);

        let request = activity.begin();
        let expired = tokio::spawn(activity.expired(None, Some(second)));
        tokio::time::sleep(second * 5).await;
        assert!(!expired.is_finished(), "a request is in flight");
        let response = request.until_sent(Response::new(
            Full::new(Bytes::from_static(b"x"))
                .map_err(|never| match never {})
                .boxed(),
        ));
        tokio::time::sleep(second * 5).await;
        assert!(!expired.is_finished(), "its body is not sent yet");
        let ended = Instant::now();
        drop(response);
        expired.await.unwrap();
        assert_eq!(ended.elapsed(), second);
    }

    /// A first request shortens the wait from the first limit to the one
    /// after, counted from its end.
    #[tokio::test(start_paused = true)]
    async fn the_limit_after_applies_once_a_request_came() {
        let activity = Activity::new();
        let (first, after) = (Duration::from_secs(30), Duration::from_secs(1));
        let expired = tokio::spawn(activity.expired(Some(first), Some(after)));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let ended = Instant::now();
        drop(activity.begin());
        expired.await.unwrap();
        assert!(ended.elapsed() <= after * 2, "{:?}", ended.elapsed());
        assert!(ended.elapsed() >= after, "{:?}", ended.elapsed());
    }
}
