//! What the workload programs in `src/bin` share: message-style errors and
//! line output ([`cli`]), the checked byte pattern ([`pattern`]) and socket
//! setup ([`socket`]).

pub mod cli;
pub mod pattern;
pub mod socket;
