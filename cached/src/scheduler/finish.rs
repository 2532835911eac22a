//! The end of a job: when its last task is done it succeeds or fails, unless it builds an image
//! and still needs the IMAGE_INDEX task that assembles it.

use proto::v1::{JobState, JobStatus, TaskKind, TaskState, TaskStatus, job_event::Kind};

use super::{Scheduler, event, finished_event, is_index, is_terminal, job_finished, now_ms};

impl Scheduler {
    pub(super) fn finish_if_done(&self, job: &mut JobStatus) {
        if job_finished(job) {
            return;
        }
        if !job.tasks.iter().all(|task| is_terminal(task.state)) {
            if job.tasks.iter().any(|task| task.attempt > 0) {
                job.state = JobState::Running as i32;
            }
            return;
        }
        let mut ok = job.tasks.iter().all(|task| task.state == TaskState::Succeeded as i32);
        if ok && job.spec.as_ref().is_some_and(|spec| spec.image.is_some()) {
            match job.tasks.iter().find(|task| is_index(task)) {
                None => match self.add_index_task(job) {
                    Ok(()) => return,
                    Err(reason) => {
                        tracing::warn!(job = %job.job_id, %reason, "no image index");
                        job.error = reason;
                        ok = false;
                    }
                },
                Some(task) => job.image = task.result.as_ref().and_then(|result| result.index.clone()),
            }
        }
        job.state = if ok { JobState::Succeeded } else { JobState::Failed } as i32;
        job.finished_unix_ms = now_ms();
        tracing::info!(job = %job.job_id, ok, "job finished");
        self.emit(&job.job_id, finished_event(job));
    }

    /// Queues the IMAGE_INDEX task of a job whose build tasks all succeeded, or says why there
    /// can be no index (a linux target that returned no image).
    ///
    /// Why an agent assembles the index rather than cached: the index is a pure function of the
    /// targets' manifests, but its bytes (canonical JSON) and SHA-256 define the image, and the
    /// one encoder of image documents is `cachectl::oci`, which agents link and cached does not;
    /// a second encoder here could drift from it and publish an index no client derives. cached
    /// stays ignorant of OCI. As a task the step gets persistence, leases, fencing and retries
    /// for free; it is a few hundred bytes of work, so it takes no build slot, goes to any
    /// connected agent whatever its Go, and is dispatched before any queued build.
    fn add_index_task(&self, job: &mut JobStatus) -> std::result::Result<(), String> {
        let mut images = 0;
        for task in &job.tasks {
            let Some(target) = task.target.as_ref().filter(|target| target.goos == "linux") else { continue };
            if task.result.as_ref().and_then(|result| result.image.as_ref()).is_none() {
                return Err(format!(
                    "target {} succeeded without an image (agent {} does not layer images?)",
                    proto::platform::label(target),
                    task.agent
                ));
            }
            images += 1;
        }
        if images == 0 {
            return Err("no target produced an image".to_owned());
        }
        let task = TaskStatus {
            index: job.tasks.len() as u32,
            state: TaskState::Queued as i32,
            kind: TaskKind::ImageIndex as i32,
            ..TaskStatus::default()
        };
        self.emit(&job.job_id, event(Kind::Queued, &task));
        job.tasks.push(task);
        job.state = JobState::Running as i32;
        tracing::info!(job = %job.job_id, images, "every target built; assembling the image index");
        Ok(())
    }
}
