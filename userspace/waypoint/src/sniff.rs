//! What an accepted connection speaks, from its first bytes, read without
//! taking them (`MSG_PEEK`): HTTP/1.x (a request line) and HTTP/2 with prior
//! knowledge (its preface starts `PRI * `) are served; anything else (a TLS
//! ClientHello, a database protocol), and a client that stays silent (the
//! server of a server-first protocol speaks first), is passed through.

use std::time::Duration;

use tokio::net::TcpStream;

/// The longest method the waypoint recognises (`OPTIONS`, `CONNECT` and
/// extension methods are shorter): a longer run of letters is not HTTP.
const MAX_METHOD: usize = 20;

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A request line (or the HTTP/2 preface): routes apply.
    Http,
    /// Passed through, for this reason (also the metric's label).
    Other(Reason),
    /// The client closed (or reset) before sending anything.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A TLS record (a ClientHello).
    Tls,
    /// Bytes that are no request line.
    NotHttp,
    /// Nothing within the wait: a server-first protocol.
    Silent,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Tls => "tls",
            Reason::NotHttp => "not_http",
            Reason::Silent => "silent",
        }
    }
}

/// What `bytes`, the first the client sent, are; `None` while they could
/// still begin a request line.
pub fn classify(bytes: &[u8]) -> Option<Sniffed> {
    // A TLS handshake record: content type 22.
    if bytes.first() == Some(&0x16) {
        return Some(Sniffed::Other(Reason::Tls));
    }
    let method = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match bytes.get(method) {
        _ if method > MAX_METHOD => Some(Sniffed::Other(Reason::NotHttp)),
        Some(b' ') if method > 0 => Some(Sniffed::Http),
        Some(_) => Some(Sniffed::Other(Reason::NotHttp)),
        None => None,
    }
}

/// Waits for the client's first bytes and classifies them, leaving them
/// in the socket. `wait`: how long a silent client is waited for before it
/// is taken for the client of a server-first protocol; `None` waits as long
/// as the client takes (a port known to speak HTTP).
pub async fn sniff(stream: &TcpStream, wait: Option<Duration>) -> Sniffed {
    let peek = async {
        let mut buf = [0u8; MAX_METHOD + 1];
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return Sniffed::Closed,
                Ok(n) => {
                    if let Some(sniffed) = classify(&buf[..n]) {
                        return sniffed;
                    }
                }
            }
            // Part of a method came: peek returns at once while bytes wait
            // in the socket, so give the rest of the line time to come.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    match wait {
        Some(wait) => tokio::time::timeout(wait, peek)
            .await
            .unwrap_or(Sniffed::Other(Reason::Silent)),
        None => peek.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_and_the_http2_preface_are_http() {
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.0",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"PROPFIND ",
        ] {
            assert_eq!(classify(start), Some(Sniffed::Http), "{start:?}");
        }
    }

    #[test]
    fn tls_and_other_protocols_are_not() {
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Some(Sniffed::Other(Reason::Tls))
        );
        for start in [
            &b"*1\r\n$4\r\nPING\r\n"[..],        // redis
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f", // postgres SSLRequest
            b"get / HTTP/1.1",
            b" GET",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        ] {
            assert_eq!(
                classify(start),
                Some(Sniffed::Other(Reason::NotHttp)),
                "{start:?}"
            );
        }
    }

    #[test]
    fn part_of_a_method_waits_for_more() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"OPTIONS"), None);
    }

    #[tokio::test]
    async fn a_silent_client_is_told_apart_from_one_that_speaks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        let _silent = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let wait = Some(Duration::from_millis(50));
        assert_eq!(sniff(&server, wait).await, Sniffed::Other(Reason::Silent));

        let mut speaks = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut speaks, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        assert_eq!(sniff(&server, None).await, Sniffed::Http);
        // The bytes are still there for the HTTP server.
        let mut buf = [0u8; 4];
        server.peek(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET ");

        drop(speaks);
        let closed = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        drop(closed);
        assert_eq!(sniff(&server, wait).await, Sniffed::Closed);
    }
}
