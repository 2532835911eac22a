//! The upload queue: puts are answered as soon as the body is on local disk, and uploaded
//! here in the background, small ones batched. Bounded: when the server cannot keep up, the
//! surplus is dropped (counted), never buffered without limit or waited for by the build.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proto::FRAME_SIZE;
use tokio::sync::{Notify, Semaphore, mpsc};

use super::counters::{Counters, bump};
use super::remote::{RemoteTier, Upload};

/// Uploads waiting at most. An entry is a path and a few IDs, so this is a few hundred KiB.
const QUEUE: usize = 4096;
/// Batches in flight at once: enough to fill a fast link, few enough to leave the CPU to the
/// compiler.
const CONCURRENT_BATCHES: usize = 4;
const BATCH_ITEMS: usize = 256;
const BATCH_BYTES: u64 = 4 << 20;

/// Queued plus running uploads, so `close` can wait for them.
struct Pending {
    count: AtomicUsize,
    idle: Notify,
}

#[derive(Clone)]
pub struct Uploader {
    queue: mpsc::Sender<Upload>,
    pending: Arc<Pending>,
    counters: Arc<Counters>,
}

impl Uploader {
    /// Starts the background sender. Needs a tokio runtime.
    pub fn start(remote: Arc<RemoteTier>, counters: Arc<Counters>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let pending = Arc::new(Pending { count: AtomicUsize::new(0), idle: Notify::new() });
        cached_client::task::spawn("upload-dispatch", dispatch(receiver, remote, Arc::clone(&pending)));
        Self { queue, pending, counters }
    }

    /// Queues an upload without waiting; a full queue drops it.
    pub fn enqueue(&self, upload: Upload) {
        self.pending.count.fetch_add(1, Ordering::SeqCst);
        if self.queue.try_send(upload).is_err() {
            bump(&self.counters.uploads_lost);
            finished(&self.pending, 1);
        }
    }

    /// Waits until every queued upload is done or `deadline` passed; returns how many are left.
    pub async fn drain(&self, deadline: Duration) -> usize {
        let wait = async {
            loop {
                let idle = self.pending.idle.notified();
                if self.pending.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.pending.count.load(Ordering::SeqCst)
    }
}

fn finished(pending: &Pending, count: usize) {
    if pending.count.fetch_sub(count, Ordering::SeqCst) == count {
        pending.idle.notify_waiters();
    }
}

/// Takes uploads off the queue in batches and sends a few batches at a time.
async fn dispatch(mut receiver: mpsc::Receiver<Upload>, remote: Arc<RemoteTier>, pending: Arc<Pending>) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_BATCHES));
    while let Some(first) = receiver.recv().await {
        let batch = gather(first, &mut receiver);
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let (remote, pending) = (Arc::clone(&remote), Arc::clone(&pending));
        cached_client::task::spawn("upload", async move {
            let count = batch.len();
            remote.upload(batch).await;
            finished(&pending, count);
            drop(slot);
        });
    }
}

/// `first` plus whatever uploads are already queued, up to a batch. Small bodies share one
/// BatchWrite; a large one (its own Cas.Write stream) ends the batch, so at most one large
/// body holds a batch's entries back.
fn gather(first: Upload, receiver: &mut mpsc::Receiver<Upload>) -> Vec<Upload> {
    let is_large = |upload: &Upload| upload.digest.size > FRAME_SIZE as u64;
    if is_large(&first) {
        return vec![first];
    }
    let mut bytes = first.digest.size;
    let mut batch = vec![first];
    while batch.len() < BATCH_ITEMS && bytes < BATCH_BYTES {
        match receiver.try_recv() {
            Ok(next) if is_large(&next) => {
                batch.push(next);
                break;
            }
            Ok(next) => {
                bytes += next.digest.size;
                batch.push(next);
            }
            Err(_) => break,
        }
    }
    batch
}
