//! cachectl: the command line of cached. The work is done by the library crates
//! (cached-client, cached-gobuild, cached-gocacheprog, cached-oci), which runner-agent uses
//! too; here are the subcommands ([`commands`]), how their results are shown ([`render`],
//! [`submit`]) and `restore-mtimes` ([`mtimes`]).

#![forbid(unsafe_code)]

pub mod commands;
pub mod mtimes;
pub mod render;
pub mod submit;
