//! The access log (`--access-log`): one JSON line per request, written once
//! its response has been sent (or abandoned), by a thread of its own so that
//! a slow disk never holds a request. Lines that find the log's queue full
//! are dropped, and counted in a warning.

use std::{
    fs::OpenOptions,
    io::{self, LineWriter, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    pin::Pin,
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{sync_channel, SyncSender, TrySendError},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{
    body::{Frame, SizeHint},
    Response,
};
use serde_json::json;
use tracing::warn;

use crate::{
    body::{Body, BoxError, Received},
    metrics::Answerer,
};

/// Lines waiting for the writer; more are dropped.
const QUEUE: usize = 10_000;

/// Where the log goes: `stdout` or a file (appended to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Target, String> {
        match text {
            "" => Err("an empty access log path".to_owned()),
            "stdout" | "-" => Ok(Target::Stdout),
            path => Ok(Target::File(PathBuf::from(path))),
        }
    }
}

pub struct AccessLog {
    lines: SyncSender<String>,
    dropped: AtomicU64,
}

/// What is known of a request when its response head goes.
pub struct Entry {
    pub answerer: Answerer,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub duration: Duration,
    pub client: IpAddr,
    pub received: Received,
}

impl AccessLog {
    /// A log writing to `target`, from a thread of its own.
    pub fn open(target: &Target) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            Target::Stdout => Box::new(io::stdout()),
            Target::File(path) => Box::new(append(path)?),
        };
        let (lines, queued) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = LineWriter::new(out);
                for line in queued {
                    if let Err(e) = writeln!(out, "{line}") {
                        warn!(error = %e, "writing the access log");
                    }
                }
            })?;
        Ok(AccessLog {
            lines,
            dropped: AtomicU64::new(0),
        })
    }

    /// `response`, whose body logs `entry` once sent or dropped.
    pub fn until_sent(self: &Arc<Self>, response: Response<Body>, entry: Entry) -> Response<Body> {
        response.map(|body| {
            Logged {
                body,
                sent: 0,
                entry: Some(entry),
                log: self.clone(),
            }
            .boxed()
        })
    }

    fn write(&self, entry: Entry, sent: u64) {
        let line = json!({
            "time": jiff::Timestamp::now().to_string(),
            "route": entry.answerer.route,
            "backend": entry.answerer.backend,
            "method": entry.method,
            "path": entry.path,
            "status": entry.status,
            "duration_ms": entry.duration.as_secs_f64() * 1000.0,
            "request_bytes": entry.received.bytes(),
            "response_bytes": sent,
            "client": entry.client.to_string(),
        });
        if let Err(TrySendError::Full(_)) = self.lines.try_send(line.to_string()) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                warn!(dropped, "access log lines dropped: the writer is behind");
            }
        }
    }
}

fn append(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// A response body that counts what it sends and logs its request at the
/// end.
struct Logged {
    body: Body,
    sent: u64,
    entry: Option<Entry>,
    log: Arc<AccessLog>,
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            self.sent += frame.data_ref().map_or(0, |data| data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.log.write(entry, self.sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!("stdout".parse(), Ok(Target::Stdout));
        assert_eq!(
            "/var/log/a.json".parse(),
            Ok(Target::File("/var/log/a.json".into()))
        );
        assert!("".parse::<Target>().is_err());
    }
}
