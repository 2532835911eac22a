//! The client side of cached as a library: connecting ([`connect`]: address, TLS, the token,
//! all passed explicitly), moving blobs in and out of the CAS ([`transfer`]) and reporting ones that came back wrong
//! ([`recheck`]), source trees as
//! Merkle trees ([`tree`]), the remote-execution handles ([`remote_exec`]), the one error
//! type every client operation returns ([`error`]), and named tasks ([`task`]). cachectl,
//! the GOCACHEPROG bridge, the build wrapper, the image builder and runner agents all build
//! on it.

#![forbid(unsafe_code)]

pub mod busy;
pub mod clock;
pub mod connect;
pub mod error;
pub mod failover;
pub mod loopback;
pub mod recheck;
pub mod remote_exec;
pub mod size;
pub mod task;
pub mod transfer;
pub mod tree;

pub use connect::{Client, ConnectOptions, Secret};
pub use error::{ClientError, Result};
