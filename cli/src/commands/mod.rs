//! One file per subcommand.

pub mod get;
pub mod gocacheprog;
pub mod has;
pub mod image;
pub mod jobs;
pub mod put;
pub mod stats;
pub mod submit;
