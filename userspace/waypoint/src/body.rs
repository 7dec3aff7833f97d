//! The body type of every request and response the waypoint handles, on
//! both sides: what it serves to clients and what its upstream client sends.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{
    body::{Frame, Incoming, SizeHint},
    HeaderMap,
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request and response bodies, streamed or in memory.
pub type Body = BoxBody<Bytes, BoxError>;

/// A client's request body on its way upstream: the frames already read
/// (for a mirror's copy), then the rest as it comes. Tells what it
/// received ([`Received`]).
pub struct ClientBody {
    read: VecDeque<Frame<Bytes>>,
    rest: Option<Incoming>,
    received: Received,
}

/// What came of a client's request body: its bytes, and whether it failed
/// on the client's side (bad chunked encoding, fewer bytes than its
/// Content-Length, a reset), so that a failed exchange is blamed on the
/// client (400), not on the upstream (502).
#[derive(Clone, Default)]
pub struct Received(Arc<Tally>);

#[derive(Default)]
struct Tally {
    bytes: AtomicU64,
    failed: AtomicBool,
}

impl Received {
    pub fn failed(&self) -> bool {
        self.0.failed.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    fn count(&self, frame: &Frame<Bytes>) {
        let len = frame.data_ref().map_or(0, Bytes::len);
        self.0.bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
}

/// The [`ClientBody`] of `read`, then `rest` (`None`: the body ended
/// within `read`), telling `received`.
pub fn from_client(read: Vec<Frame<Bytes>>, rest: Option<Incoming>, received: &Received) -> Body {
    for frame in &read {
        received.count(frame);
    }
    let body = ClientBody {
        read: read.into(),
        rest,
        received: received.clone(),
    };
    body.boxed()
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(rest).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => self.received.count(frame),
            Poll::Ready(Some(Err(_))) => self.received.0.failed.store(true, Ordering::Relaxed),
            _ => {}
        }
        polled.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self
            .read
            .iter()
            .filter_map(|frame| frame.data_ref().map(|data| data.len() as u64))
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint);
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + read);
        }
        hint.set_lower(rest.lower() + read);
        hint
    }
}

/// A client's request body read ahead, up to a limit, before it goes
/// upstream.
pub enum ReadAhead {
    /// It ended within the limit: kept whole, it can be sent again.
    Whole(Replay),
    /// It is longer: what was read, then the rest, sent once.
    Partial(Body),
}

/// A whole request body, to send as many times as needed (to mirrors, and
/// again when an attempt is retried).
#[derive(Clone, Default)]
pub struct Replay {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replay {
    pub fn body(&self) -> Body {
        let data = Full::new(self.data.clone()).map_err(|never| match never {});
        // Without trailers, the body's exact length frames it as the
        // client's did (no body at all, or a Content-Length).
        match self.trailers.clone() {
            None => data.boxed(),
            Some(trailers) => data.with_trailers(async { Some(Ok(trailers)) }).boxed(),
        }
    }
}

/// Reads `body` until it ends or more than `limit` bytes have come,
/// telling `received` what was read.
pub async fn read_ahead(
    mut body: Incoming,
    limit: usize,
    received: &Received,
) -> Result<ReadAhead, hyper::Error> {
    let mut read = Vec::new();
    let mut len = 0;
    loop {
        if len > limit {
            return Ok(ReadAhead::Partial(from_client(read, Some(body), received)));
        }
        match body.frame().await.transpose()? {
            Some(frame) => {
                len += frame.data_ref().map_or(0, Bytes::len);
                read.push(frame);
            }
            None => break,
        }
    }
    let mut data = BytesMut::with_capacity(len);
    let mut trailers = None;
    for frame in read {
        received.count(&frame);
        match frame.into_data() {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok(ReadAhead::Whole(Replay {
        data: data.freeze(),
        trailers,
    }))
}
