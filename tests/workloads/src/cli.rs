//! What the sandbox's own programs (`zh-testpod`, `zh-bench`, …) share:
//! message-style errors and line output (their flags are parsed by clap).

use std::io::{self, Write};

/// Errors are messages: these programs only report them.
pub type Res<T> = Result<T, String>;

/// Adds what was being done to an error.
pub trait Context<T> {
    fn ctx(self, what: &str) -> Res<T>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// Prints a line and flushes it at once: the caller reads it while we run.
pub fn say(line: impl std::fmt::Display) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
