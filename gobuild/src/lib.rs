//! The go command behind the whole-build cache (`cachectl go build`, and runner agents' builds).
//!
//! The build key comes from the Go build inputs ([`inputs`]: `go env -json` and one
//! `go list -deps -json`, and the files the listed sources include, [`includes`]), each hashed
//! on its own into a [`manifest`]; the key is the hash of
//! the manifest (docs/build-keys.md). A hit restores the outputs without running the compiler
//! or the linker ([`outputs`]); a miss prints why ([`explain`]: the server compared the
//! manifest with the nearest earlier build of the target), runs go build with the GOCACHEPROG
//! bridge, uploads the outputs and records the build ([`build`]). go's output and exit code pass
//! through; a failed build is never recorded; flags the wrapper does not understand
//! ([`flags`]) and an unreachable server make it run go without the whole-build cache and say
//! why.
//!
//! runner-agent builds its targets through [`build()`] too, so remote builds use and fill the
//! same cache; the module dependencies a remote build ships travel as a module proxy tree
//! ([`modules`]). Every process (go, the C compiler, git) runs through [`exec`].

#![forbid(unsafe_code)]

pub mod build;
mod confine;
pub mod exec;
pub mod explain;
mod filememo;
pub mod flags;
pub mod gocache;
pub mod includes;
pub mod inputs;
pub mod manifest;
pub mod modules;
mod modverify;
pub mod outputs;
mod own;
mod pkgconfig;
#[cfg(test)]
mod testing;

pub use build::{
    BuildOptions, BuildOutcome, BuildRequest, bridge_env, build, build_with, default_gocacheprog,
};
