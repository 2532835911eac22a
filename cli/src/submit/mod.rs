//! The submitter side of remote execution: the module dependencies a build needs as a module
//! proxy tree ([`modules`]), and how a job is shown while it runs and when it ends
//! ([`progress`]). The image part of a job is `cached_oci::job`.

pub mod modules;
pub mod progress;
