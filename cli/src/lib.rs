//! cachectl: the client side of cached. The binary is a thin clap front over these modules,
//! and runner-agent reuses them rather than re-implementing any of it.

#![forbid(unsafe_code)]

pub mod commands;
pub mod gocacheprog;
pub mod mtimes;
pub mod render;
pub mod submit;
