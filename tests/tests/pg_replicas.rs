//! Remote builds across replicas: two `cached` processes sharing one PostgreSQL server (its
//! own, made by `initdb` in a temporary directory), real `runner-agent` processes given both
//! replicas, and a tiny Go module. Leases are short (heartbeat 200ms, lease 2s) so expiry and
//! failover happen within seconds.

use std::process::Command;
use std::time::{Duration, Instant};

use cached_client::connect::ConnectOptions;
use cached_client::remote_exec::RemoteExec;
use cached_e2e::postgres::Postgres;
use cached_e2e::remote::{Agent, TinyModule, succeeded_with_outputs};
use cached_e2e::{Daemon, go, run};
use proto::v1::{
    AgentInfo, CompleteRequest, LeaseRequest, TaskResult, complete_request, lease_request, lease_response,
};

const LEASE: &[&str] = &["--heartbeat-interval", "200ms", "--lease-timeout", "2s"];

/// Leases of the hundred-job test. No agent dies there, so their length costs no time; and its
/// twelve Go builds at once load a two-core machine so much (load average 20 and more) that a
/// replica's heartbeat transaction was measured taking up to 2s: a 2s lease would test the
/// machine's scheduler, not ours.
const PATIENT_LEASE: &[&str] = &["--heartbeat-interval", "1s", "--lease-timeout", "10s"];

/// A replica of cached on `db`, with its own data directory.
fn replica(db: &Postgres) -> Daemon {
    replica_leasing(db, LEASE)
}

/// A replica of cached on `db` whose leases are timed by `lease_flags`.
fn replica_leasing(db: &Postgres, lease_flags: &[&str]) -> Daemon {
    let mut flags: Vec<String> = lease_flags.iter().map(|flag| (*flag).to_owned()).collect();
    flags.extend(db.flags());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Daemon::start_in(tempfile::tempdir().unwrap(), &flags)
}

/// Every accepted completion is one row; no (task) completed twice.
fn assert_each_task_completed_once(db: &Postgres, jobs: usize) {
    assert_eq!(db.query("SELECT count(*) FROM completions WHERE succeeded"), jobs.to_string());
    assert_eq!(
        db.query("SELECT count(*) FROM (SELECT DISTINCT job_id, idx FROM completions WHERE succeeded) t"),
        jobs.to_string()
    );
    assert_eq!(db.query("SELECT count(*) FROM tasks WHERE state <> 3"), "0", "every task succeeded");
}

#[test]
fn two_replicas_and_three_agents_complete_each_of_a_hundred_jobs_once() {
    const JOBS: usize = 100;
    let db = Postgres::start();
    let (a, b) = (replica_leasing(&db, PATIENT_LEASE), replica_leasing(&db, PATIENT_LEASE));
    let (a_url, b_url) = (a.url(), b.url());
    let tiny = TinyModule::new();
    // Each replica keeps its own blobs (no shared blob tier here): the first submission through
    // each puts the module's tree in both, before any agent could look for it in the other.
    let mut ids = vec![tiny.submit(&a_url), tiny.submit(&b_url)];
    let _agents = [
        Agent::start(&format!("{a_url},{b_url}"), "one", 4),
        Agent::start(&format!("{b_url},{a_url}"), "two", 4),
        Agent::start(&format!("{a_url},{b_url}"), "three", 4),
    ];
    let started = Instant::now();
    ids.extend(std::thread::scope(|scope| {
        let through = |server: &str| {
            let (tiny, server) = (&tiny, server.to_owned());
            scope.spawn(move || (1..JOBS / 2).map(|_| tiny.submit(&server)).collect::<Vec<_>>())
        };
        let (first, second) = (through(&a_url), through(&b_url));
        let mut ids = first.join().unwrap();
        ids.extend(second.join().unwrap());
        ids
    }));
    let jobs = tiny.wait_finished(&b_url, &ids, Duration::from_secs(300));
    eprintln!("{JOBS} jobs through 2 replicas and 3 agents in {:?}", started.elapsed());
    let failed: Vec<_> = jobs.iter().filter(|job| !succeeded_with_outputs(job)).collect();
    assert!(failed.is_empty(), "jobs that did not succeed with outputs: {failed:?}");
    assert_eq!(tiny.jobs(&a_url).len(), tiny.jobs(&b_url).len(), "both replicas list the same jobs");
    assert_each_task_completed_once(&db, JOBS);
    let agents = db.query("SELECT count(DISTINCT agent) FROM completions");
    assert!(agents.parse::<u32>().unwrap() >= 2, "the work was shared: {agents} agents");
}

#[test]
fn a_replica_killed_mid_jobs_leaves_every_job_to_the_other() {
    const JOBS: usize = 16;
    let db = Postgres::start();
    let (mut a, b) = (replica(&db), replica(&db));
    let (a_url, b_url) = (a.url(), b.url());
    // Both agents start on replica a, the one that dies.
    let tiny = TinyModule::new();
    // The tree in both replicas' blob stores (each keeps its own here) before the agents start.
    let mut ids = vec![tiny.submit(&a_url)];
    ids.extend((1..JOBS).map(|_| tiny.submit(&b_url)));
    let servers = format!("{a_url},{b_url}");
    let _agents = [Agent::start(&servers, "left", 2), Agent::start(&servers, "right", 2)];
    let deadline = Instant::now() + Duration::from_secs(120);
    while db.query("SELECT count(*) FROM completions").parse::<usize>().unwrap() < 2 {
        assert!(Instant::now() < deadline, "no job completed");
        std::thread::sleep(Duration::from_millis(50));
    }
    a.kill();
    let done = db.query("SELECT count(*) FROM completions");
    let jobs = tiny.wait_finished(&b_url, &ids, Duration::from_secs(180));
    assert!(jobs.iter().all(succeeded_with_outputs), "{jobs:?}");
    assert_each_task_completed_once(&db, JOBS);
    assert!(done.parse::<usize>().unwrap() < JOBS, "replica a died before the jobs were done ({done})");
}

/// Replicas on one database and one bucket: a job finished through A answers the same
/// submission through B, which never saw it submitted; once the namespace is purged through A,
/// B answers with it no more (B had it in memory since it last answered with it), and a purge
/// through either cancels the namespace's unfinished jobs.
#[test]
fn a_job_finished_through_one_replica_answers_the_same_submission_through_another() {
    let db = Postgres::start();
    let s3 = cached_e2e::s3::S3Server::start();
    let database = db.flags();
    let database: Vec<&str> = database.iter().map(String::as_str).collect();
    let on_both = || s3.replica_in(tempfile::tempdir().unwrap(), &database);
    let (a, b) = (on_both(), on_both());
    let (a_url, b_url) = (a.url(), b.url());
    let tiny = TinyModule::new();
    let first = tiny.submit_reusing(&a_url);
    let agent = Agent::start(&a_url, "one", 1);
    let jobs = tiny.wait_finished(&a_url, std::slice::from_ref(&first), Duration::from_secs(120));
    assert!(succeeded_with_outputs(&jobs[0]), "{jobs:?}");
    assert_eq!(tiny.submit_reusing(&b_url), first, "B built again what A had finished");
    assert_eq!(db.query("SELECT count(*) FROM jobs"), "1", "B queued a job");

    let purge = ["admin", "purge", "--namespace", "default"];
    let purged = run(tiny.cachectl(&a_url, &purge)).success("purge through A").stdout;
    assert!(purged.contains("1 earlier jobs will not be reused"), "{purged}");
    drop(agent); // The next job stays unfinished.
    let second = tiny.submit_reusing(&b_url);
    assert_ne!(second, first, "B reused a job from before the purge");
    assert_eq!(db.query("SELECT count(*) FROM jobs"), "2");

    // A purge through B ends A's unfinished job too: it may have read what the purge removed.
    let purged = run(tiny.cachectl(&b_url, &purge)).success("purge through B").stdout;
    assert!(purged.contains("1 unfinished jobs cancelled"), "{purged}");
    let finished = db.query(&format!("SELECT finished FROM jobs WHERE job_id = '{second}'"));
    assert_eq!(finished, "t", "the unfinished job was not cancelled");
}

/// The go version agents report, which jobs are matched against.
fn go_version() -> String {
    let output = Command::new(go()).args(["env", "GOVERSION"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn a_lost_agent_task_is_leased_again_elsewhere_and_its_stale_completion_is_refused() {
    let db = Postgres::start();
    let (a, b) = (replica(&db), replica(&db));
    let (a_url, b_url) = (a.url(), b.url());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // A ghost agent on replica a takes the job's only task, then vanishes without a word, as
    // a SIGKILLed agent does; it keeps the lease's token.
    let (sender, mut inbound, remote) = runtime.block_on(async {
        let remote = RemoteExec::connect(&a_url, &ConnectOptions::default()).await.unwrap();
        let (sender, outbound) = tokio::sync::mpsc::channel(4);
        let info = AgentInfo {
            agent_id: "ghost".into(),
            go_version: go_version(),
            host_goos: "linux".into(),
            host_goarch: "amd64".into(),
            capacity: 1,
            instance: vec![7; 16].into(),
            ..AgentInfo::default()
        };
        sender.send(LeaseRequest { kind: Some(lease_request::Kind::Register(info)) }).await.unwrap();
        let mut workers = remote.workers.clone();
        let inbound =
            workers.lease(tokio_stream::wrappers::ReceiverStream::new(outbound)).await.unwrap().into_inner();
        (sender, inbound, remote)
    });
    let tiny = TinyModule::new();
    let job = tiny.submit(&b_url);
    let token = runtime.block_on(async {
        loop {
            let message = inbound.message().await.unwrap().expect("the lease stream goes on");
            if let Some(lease_response::Kind::Task(lease)) = message.kind {
                return lease.token;
            }
        }
    });
    let token = token.expect("the ghost was leased the task");
    assert_eq!((token.job_id.as_str(), token.attempt), (job.as_str(), 1));
    drop((sender, inbound));

    let _rescuer = Agent::start(&format!("{b_url},{a_url}"), "rescuer", 1);
    let jobs = tiny.wait_finished(&a_url, std::slice::from_ref(&job), Duration::from_secs(120));
    assert!(succeeded_with_outputs(&jobs[0]), "{:?}", jobs[0]);
    assert_eq!(jobs[0]["tasks"][0]["attempt"], 2, "{:?}", jobs[0]);
    assert_eq!(jobs[0]["tasks"][0]["agent"], "rescuer");

    // The ghost comes back, through the other replica, with its old lease.
    let stale = runtime.block_on(async {
        let remote = RemoteExec::connect(&b_url, &ConnectOptions::default()).await.unwrap();
        let outcome = complete_request::Outcome::Success(TaskResult::default());
        remote.workers.clone().complete(CompleteRequest { token: Some(token), outcome: Some(outcome) }).await
    });
    drop(remote);
    let status = stale.expect_err("a stale completion is refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("stale lease"), "{status:?}");
    assert_eq!(
        db.query(&format!("SELECT string_agg(attempt::text, ',') FROM completions WHERE job_id = '{job}'")),
        "2"
    );
}

#[test]
fn explain_and_stats_answer_the_same_through_either_replica() {
    let db = Postgres::start();
    let (a, b) = (replica(&db), replica(&db));
    let (a_url, b_url) = (a.url(), b.url());
    let tiny = TinyModule::new();
    let build = |server: &str| {
        run(tiny.cachectl(server, &["go", "build", "-o", "bin/tiny", "."])).success("go build")
    };
    build(&a_url);
    std::fs::write(tiny.dir().join("main.go"), "package main\n\nfunc main() { println(\"changed\") }\n")
        .unwrap();
    build(&b_url);
    // A hit through b: its outputs are in b's blob store (each replica keeps its own blobs here;
    // through a, the record is found and its outputs are not, a miss as "outputs evicted").
    build(&b_url);
    let json = |server: &str, args: &[&str]| -> serde_json::Value {
        let done = run(tiny.cachectl(server, args)).success(&args.join(" "));
        serde_json::from_str(&done.stdout).unwrap_or_else(|err| panic!("{err}: {}", done.stdout))
    };
    let explain = ["explain", "example.com/tiny", "--json"];
    let (through_a, through_b) = (json(&a_url, &explain), json(&b_url, &explain));
    assert_eq!(through_a, through_b);
    assert!(through_a.to_string().contains("source files"), "{through_a}");
    let stats = ["stats", "--json", "--since", "1h"];
    let builds = |server: &str| {
        let mut builds = json(server, &stats)["builds"].clone();
        // The share of Go action hits is each process's own counter, not a build record.
        for namespace in builds["namespaces"].as_array_mut().into_iter().flatten() {
            namespace.as_object_mut().unwrap().remove("go_action_hit_rate");
        }
        builds
    };
    let (through_a, through_b) = (builds(&a_url), builds(&b_url));
    assert_eq!(through_a, through_b);
    assert_eq!(through_a["namespaces"][0]["hits"], 1, "{through_a}");
    assert_eq!(through_a["namespaces"][0]["records"], 2, "{through_a}");
}

#[test]
fn without_the_database_jobs_answer_unavailable_the_cache_works_on_and_all_recovers() {
    let db = Postgres::start();
    let a = replica(&db);
    let url = a.url();
    let tiny = TinyModule::new();
    let job = tiny.submit(&url);
    db.stop();
    let listed = run(tiny.cachectl(&url, &["jobs", "list", "--all", "--json"]));
    assert!(!listed.status.success(), "{}", listed.stdout);
    assert!(listed.stderr.contains("database is unavailable"), "{}", listed.stderr);
    let source = tiny.dir().join("main.go");
    let put =
        run(tiny.cachectl(&url, &["put", &source.display().to_string()])).success("put without the database");
    let digest = put.stdout.trim().to_owned();
    run(tiny.cachectl(&url, &["has", &digest])).success("has without the database");
    db.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = run(tiny.cachectl(&url, &["jobs", "list", "--all", "--json"]));
        if listed.status.success() && listed.stdout.contains(&job) {
            break;
        }
        assert!(Instant::now() < deadline, "jobs never came back: {}", listed.stderr);
        std::thread::sleep(Duration::from_millis(200));
    }
}
