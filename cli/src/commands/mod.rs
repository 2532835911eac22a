//! One file per subcommand.

pub mod admin;
pub mod explain;
pub mod get;
pub mod gobuild;
pub mod has;
pub mod image;
pub mod jobs;
pub mod mtimes;
pub mod put;
pub mod sign;
pub mod stats;
pub mod submit;
pub mod verify;
pub mod warm;
