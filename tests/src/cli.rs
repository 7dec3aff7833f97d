//! What the sandbox's own programs (`zh-testpod`, `zh-bench`) share: their
//! `--flag value` parsing, message-style errors, and line output.

use std::{
    collections::HashMap,
    io::{self, Write},
    str::FromStr,
};

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

/// `--name value` pairs; a flag without a value (`--nodelay`) is "true".
pub struct Flags(HashMap<String, String>);

impl Flags {
    pub fn parse(args: &[String]) -> Res<Flags> {
        let mut flags = HashMap::new();
        let mut args = args.iter().peekable();
        while let Some(arg) = args.next() {
            let name = arg
                .strip_prefix("--")
                .ok_or_else(|| format!("expected a --flag, got {arg:?}"))?;
            let value = args
                .next_if(|next| !next.starts_with("--"))
                .cloned()
                .unwrap_or_else(|| "true".into());
            flags.insert(name.to_owned(), value);
        }
        Ok(Flags(flags))
    }

    pub fn get<T: FromStr>(&self, name: &str) -> Res<T>
    where
        T::Err: std::fmt::Display,
    {
        let value = self
            .0
            .get(name)
            .ok_or_else(|| format!("--{name} is required"))?;
        value.parse().ctx(&format!("--{name} {value}"))
    }

    pub fn get_or<T: FromStr>(&self, name: &str, default: T) -> Res<T>
    where
        T::Err: std::fmt::Display,
    {
        if self.0.contains_key(name) {
            self.get(name)
        } else {
            Ok(default)
        }
    }
}

impl Flags {
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// Prints a line and flushes it at once: the caller reads it while we run.
pub fn say(line: impl std::fmt::Display) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn flags_parse() {
        let args: Vec<String> = ["--target", "[::1]:80", "--nodelay", "--bytes", "5"]
            .map(String::from)
            .into();
        let flags = Flags::parse(&args).unwrap();
        assert_eq!(flags.get::<SocketAddr>("target").unwrap().port(), 80);
        assert!(flags.get::<bool>("nodelay").unwrap());
        assert_eq!(flags.get::<u64>("bytes").unwrap(), 5);
        assert!(flags.get::<u64>("count").is_err());
        assert_eq!(flags.get_or::<u64>("count", 7).unwrap(), 7);
        assert!(flags.has("nodelay") && !flags.has("count"));
    }
}
