//! What one `submit` or `worker` token can make the scheduler hold or send, on both backends
//! (RocksDB, PostgreSQL):
//! - Jobs.List of many jobs with large specs: a reply stops at 1 MiB and says where to go on,
//!   so it never passes `max_message_size` (which tonic refused only after encoding it all),
//!   and paging with `before` lists every job once.

use cached_e2e::Daemon;
use cached_e2e::postgres::Postgres;
use proto::Digest;
use proto::v1::{self, jobs_client::JobsClient};
use tonic::transport::Channel;

/// Jobs of about 60 KiB each: together past the smallest `max_message_size` (2 MiB).
const JOBS: usize = 48;

#[tokio::test]
async fn listing_many_large_jobs_pages_within_the_message_size_on_rocksdb() {
    listing_many_large_jobs(&[]).await;
}

#[tokio::test]
async fn listing_many_large_jobs_pages_within_the_message_size_on_postgresql() {
    let db = Postgres::start();
    listing_many_large_jobs(&db.flags()).await;
}

fn start(backend: &[String], flags: &[&str]) -> Daemon {
    let mut all: Vec<&str> = flags.to_vec();
    all.extend(backend.iter().map(String::as_str));
    Daemon::start_in(tempfile::tempdir().unwrap(), &all)
}

/// A linux job whose image labels make its spec about 60 KiB (a spec is at most 64 KiB).
fn large_spec(n: usize) -> v1::JobSpec {
    let labels = (0..15).map(|i| (format!("label-{i}"), format!("{n}-{}", "x".repeat(4000)))).collect();
    v1::JobSpec {
        source_root: Some(Digest::of(b"tree").to_wire()),
        targets: vec!["linux/amd64".parse::<proto::Platform>().unwrap().to_wire("")],
        go_version: "go1.26.8".into(),
        image: Some(v1::ImageSpec { labels, ..v1::ImageSpec::default() }),
        ..v1::JobSpec::default()
    }
}

async fn list(jobs: &mut JobsClient<Channel>, before: &str) -> Result<v1::ListResponse, tonic::Status> {
    let request = v1::ListRequest { limit: 1000, all: true, before: before.to_owned() };
    Ok(jobs.list(request).await?.into_inner())
}

async fn listing_many_large_jobs(backend: &[String]) {
    let daemon = start(backend, &["--max-message-size", "2MiB"]);
    let mut jobs = JobsClient::connect(daemon.url()).await.unwrap().max_decoding_message_size(64 << 20);
    let mut submitted = Vec::new();
    for n in 0..JOBS {
        let request = v1::SubmitRequest { spec: Some(large_spec(n)), rebuild: false };
        submitted.push(jobs.submit(request).await.unwrap().into_inner().job_id);
    }
    let (mut listed, mut before, mut replies) = (Vec::new(), String::new(), 0);
    loop {
        let reply = list(&mut jobs, &before).await.unwrap_or_else(|status| panic!("List failed: {status:?}"));
        replies += 1;
        let bytes = prost::Message::encoded_len(&reply);
        assert!(bytes <= 1 << 20, "a reply of {bytes} bytes");
        listed.extend(reply.jobs.into_iter().map(|job| {
            assert!(job.spec.is_some_and(|spec| spec.image.is_some()), "jobs are listed whole");
            job.job_id
        }));
        if reply.next.is_empty() {
            break;
        }
        before = reply.next;
    }
    submitted.reverse();
    assert_eq!(listed, submitted, "every job once, newest first");
    assert!(replies > 2, "{JOBS} jobs of 60 KiB take more than two 1 MiB replies, not {replies}");
}
