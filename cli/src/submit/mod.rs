//! The submitter side of remote execution: how a job is shown while it runs and when it ends
//! ([`progress`]). The module proxy tree a job ships is `cached_gobuild::modules`, the image
//! part of a job `cached_oci::job`.

pub mod progress;
