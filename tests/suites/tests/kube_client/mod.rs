//! What the tests that drive the in-process API server with the real kube-rs
//! client share: a client for the server, and bounded waits.

use std::future::Future;
use std::time::Duration;

use kube::{Client, Config};
use zerohop_fake_apiserver::ApiServer;

/// The longest any one step of these tests may take.
const STEP: Duration = Duration::from_secs(10);

/// `fut`'s output; panics naming `what` when it takes longer than [`STEP`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Polls `check` until it holds; panics naming `what` after [`STEP`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A kube-rs client of `server`.
pub fn client(server: &ApiServer) -> Client {
    let config = Config::new(server.url().parse().expect("url"));
    Client::try_from(config).expect("client")
}
