//! The submitter side of remote execution: the module dependencies a build needs as a module
//! proxy tree ([`modules`]), the image part of a job between the wire and the image library
//! ([`image`]), and how a job is shown while it runs and when it ends ([`progress`]).

pub mod image;
pub mod modules;
pub mod progress;
