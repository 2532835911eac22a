//! The server loop: the go command's requests in on one thread, responses out on another,
//! remote work on the async runtime in between.
//!
//! The reader thread never waits on the network: local hits and puts are answered right there
//! (a few file system calls), written by the reader itself once it has handled what one read
//! brought, so a burst of hits costs one pipe write and no thread handoff. A local miss becomes a
//! task whose answer the writer thread writes whenever it is ready, in any order, batching
//! whatever is waiting into one flush.

use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use futures::future::BoxFuture;
use proto::{ActionId, OutputId};
use tokio::runtime::Handle;
use tokio::sync::{Notify, oneshot};

use super::protocol::{Decoder, Event, Hit, ProtocolError, Request, Response};

/// Bytes read from the go command at a time.
const READ_SIZE: usize = 64 << 10;

/// What the server loop needs from a cache. The tiers implement it; tests use fakes.
pub trait Cache: Send + Sync + 'static {
    /// Looks an action up without touching the network. Runs on the reader thread.
    fn get_local(&self, action_id: &ActionId) -> Local;
    /// Looks an action up remotely after a local miss. Failures are misses.
    fn get_remote(self: Arc<Self>, action_id: ActionId) -> BoxFuture<'static, Option<Hit>>;
    /// Starts storing a body; its bytes follow through the returned sink.
    fn begin_put(
        &self,
        action_id: ActionId,
        output_id: OutputId,
        size: u64,
    ) -> Result<Box<dyn BodySink>, String>;
    /// Finishes the session: flushes what is pending, within the cache's own deadline.
    fn close(self: Arc<Self>) -> BoxFuture<'static, ()>;
}

pub enum Local {
    Hit(Hit),
    Miss,
    /// Not here, but worth asking the remote tier.
    TryRemote,
}

/// Receives one put body, piece by piece, on the reader thread.
pub trait BodySink: Send {
    fn write(&mut self, piece: &[u8]) -> Result<(), String>;
    /// Makes the body durable and returns its absolute path for `DiskPath`.
    fn finish(self: Box<Self>) -> Result<PathBuf, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("reading requests from the go command: {0}")]
    Read(io::Error),
}

/// One line for the writer; `last` ends the session once it is written.
struct Outgoing {
    response: Response,
    last: bool,
}

type Outbox = mpsc::Sender<Outgoing>;

/// Our stdout, which the go command reads answers from: the reader and writer threads both
/// write to it.
type SharedOutput = Arc<Mutex<dyn Write + Send>>;

/// How the reader thread ended.
enum ReadEnd {
    Closed,
    Eof,
    Failed(ServeError),
}

/// Serves the protocol on `input`/`output` until `close` is answered or the input ends.
/// Malformed input ends the session with an error (the caller exits non-zero; the go command
/// then reports that its cache program died).
pub async fn serve<R, W>(input: R, output: W, cache: Arc<dyn Cache>) -> Result<(), ServeError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let output: SharedOutput = Arc::new(Mutex::new(BufWriter::with_capacity(64 << 10, output)));
    // First, before any answer: the go command reads the handshake before anything else. A
    // failed write here shows again in the writer thread, which ends the session.
    let _ = write_all(&output, &[Response::handshake()]);
    let (outbox, outgoing) = mpsc::channel::<Outgoing>();
    let (written_tx, written) = oneshot::channel();
    let writer_output = Arc::clone(&output);
    std::thread::Builder::new()
        .name("gocacheprog-writer".into())
        .spawn(move || {
            let _ = written_tx.send(write_loop(&writer_output, &outgoing));
        })
        .map_err(ServeError::Read)?;
    let (ended_tx, ended) = oneshot::channel();
    // Held until the end, so the writer stops only at the last answer or a failed write, never
    // merely because the reader finished first.
    let _keep_writer = outbox.clone();
    let reader = Reader {
        cache: Arc::clone(&cache),
        outbox,
        output,
        handle: Handle::current(),
        in_flight: InFlight::new(),
    };
    std::thread::Builder::new()
        .name("gocacheprog-reader".into())
        .spawn(move || {
            let _ = ended_tx.send(reader.run(input));
        })
        .map_err(ServeError::Read)?;
    finish(cache, ended, written).await
}

async fn finish(
    cache: Arc<dyn Cache>,
    ended: oneshot::Receiver<ReadEnd>,
    written: oneshot::Receiver<io::Result<()>>,
) -> Result<(), ServeError> {
    tokio::pin!(written);
    tokio::select! {
        end = ended => match end.unwrap_or(ReadEnd::Eof) {
            // The close task writes the last answer; the session ends once it is out.
            ReadEnd::Closed => {
                let _ = written.await;
                Ok(())
            }
            // The go command went away without `close`: still flush what is pending.
            ReadEnd::Eof => {
                cache.close().await;
                Ok(())
            }
            ReadEnd::Failed(err) => Err(err),
        },
        // The go command stopped reading (it died): nothing more can be answered.
        _ = &mut written => {
            cache.close().await;
            Ok(())
        }
    }
}

fn write_loop(output: &SharedOutput, outgoing: &mpsc::Receiver<Outgoing>) -> io::Result<()> {
    while let Ok(first) = outgoing.recv() {
        let mut output = output.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut last = write_one(&mut *output, first)?;
        while !last {
            match outgoing.try_recv() {
                Ok(next) => last = write_one(&mut *output, next)?,
                Err(_) => break,
            }
        }
        output.flush()?;
        if last {
            break;
        }
    }
    Ok(())
}

fn write_one(output: &mut (dyn Write + Send), message: Outgoing) -> io::Result<bool> {
    output.write_all(&message.response.encode())?;
    Ok(message.last)
}

/// Writes and flushes answers at once, on the calling thread.
fn write_all(output: &SharedOutput, responses: &[Response]) -> io::Result<()> {
    let mut output = output.lock().unwrap_or_else(|poison| poison.into_inner());
    for response in responses {
        output.write_all(&response.encode())?;
    }
    output.flush()
}

/// Counts remote lookups still running, so `close` is answered only after them.
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    fn new() -> Arc<Self> {
        Arc::new(Self { count: AtomicUsize::new(0), idle: Notify::new() })
    }

    fn start(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// The put whose body is arriving: its ID and its sink, or the error that will answer it.
struct BodyInProgress {
    id: i64,
    sink: Result<Box<dyn BodySink>, String>,
}

struct Reader {
    cache: Arc<dyn Cache>,
    outbox: Outbox,
    output: SharedOutput,
    handle: Handle,
    in_flight: Arc<InFlight>,
}

impl Reader {
    fn run<R: Read>(self, mut input: R) -> ReadEnd {
        let mut decoder = Decoder::new();
        let mut buffer = vec![0u8; READ_SIZE];
        let mut body = None;
        let mut answers = Vec::new();
        loop {
            let read = match input.read(&mut buffer) {
                Ok(0) if decoder.is_between_requests() => return ReadEnd::Eof,
                Ok(0) => {
                    let err = ProtocolError { line: 0, message: "input ended inside a request".into() };
                    return ReadEnd::Failed(err.into());
                }
                Ok(read) => read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return ReadEnd::Failed(ServeError::Read(err)),
            };
            decoder.push(&buffer[..read]);
            loop {
                match decoder.next_event() {
                    Ok(Some(event)) => {
                        if self.handle_event(event, &mut body, &mut answers) {
                            return ReadEnd::Closed;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => return ReadEnd::Failed(err.into()),
                }
            }
            self.answer(&mut answers);
        }
    }

    /// Writes the answers gathered so far. A failed write means the go command stopped
    /// reading; the session ends when its requests do.
    fn answer(&self, answers: &mut Vec<Response>) {
        if !answers.is_empty() {
            let _ = write_all(&self.output, answers);
            answers.clear();
        }
    }

    /// Returns true once `close` was received. Answers known at once go to `answers`.
    fn handle_event(
        &self,
        event: Event,
        body: &mut Option<BodyInProgress>,
        answers: &mut Vec<Response>,
    ) -> bool {
        match event {
            Event::Request(Request::Get { id, action_id }) => self.get(id, action_id, answers),
            Event::Request(Request::Put { id, action_id, output_id, body_size }) => {
                let sink = self.cache.begin_put(action_id, output_id, body_size);
                let put = BodyInProgress { id, sink };
                if body_size == 0 { answers.push(finish_put(put)) } else { *body = Some(put) }
            }
            Event::Body(piece) => {
                // After a write error the rest of the body is read and dropped; the error
                // answers the put once the body ends.
                if let Some(put) = body.as_mut()
                    && let Ok(sink) = &mut put.sink
                    && let Err(err) = sink.write(&piece)
                {
                    put.sink = Err(err);
                }
            }
            Event::BodyEnd => {
                if let Some(put) = body.take() {
                    answers.push(finish_put(put));
                }
            }
            Event::Request(Request::Close { id }) => {
                self.answer(answers);
                self.close(id);
                return true;
            }
            Event::Request(Request::Unknown { id, command }) => {
                answers
                    .push(Response::error(id, format!("cachectl gocacheprog: unknown command {command:?}")));
            }
        }
        false
    }

    fn get(&self, id: i64, action_id: ActionId, answers: &mut Vec<Response>) {
        match self.cache.get_local(&action_id) {
            Local::Hit(hit) => answers.push(Response::hit(id, &hit)),
            Local::Miss => answers.push(Response::miss(id)),
            Local::TryRemote => {
                let (cache, outbox, in_flight) =
                    (Arc::clone(&self.cache), self.outbox.clone(), Arc::clone(&self.in_flight));
                in_flight.start();
                cached_client::task::spawn_on(&self.handle, "lookup-remote", async move {
                    let response = match cache.get_remote(action_id).await {
                        Some(hit) => Response::hit(id, &hit),
                        None => Response::miss(id),
                    };
                    let _ = outbox.send(Outgoing { response, last: false });
                    in_flight.done();
                });
            }
        }
    }

    /// Answers `close` after every pending lookup was answered and the cache flushed.
    fn close(&self, id: i64) {
        let (cache, outbox, in_flight) =
            (Arc::clone(&self.cache), self.outbox.clone(), Arc::clone(&self.in_flight));
        cached_client::task::spawn_on(&self.handle, "close-session", async move {
            in_flight.wait_idle().await;
            cache.close().await;
            let _ = outbox.send(Outgoing { response: Response::closed(id), last: true });
        });
    }
}

fn finish_put(put: BodyInProgress) -> Response {
    match put.sink.and_then(|sink| sink.finish()) {
        Ok(path) => Response::stored(put.id, &path),
        Err(err) => Response::error(put.id, format!("cachectl gocacheprog: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    /// RemoteTier lookups take `action_id[0]` milliseconds and hit; puts are kept in memory.
    #[derive(Default)]
    struct FakeCache {
        bodies: Mutex<Vec<Vec<u8>>>,
        closed: Mutex<bool>,
    }

    struct FakeSink {
        cache: Arc<FakeCache>,
        body: Vec<u8>,
    }

    impl BodySink for FakeSink {
        fn write(&mut self, piece: &[u8]) -> Result<(), String> {
            self.body.extend_from_slice(piece);
            Ok(())
        }

        fn finish(self: Box<Self>) -> Result<PathBuf, String> {
            let mut bodies = self.cache.bodies.lock().unwrap();
            bodies.push(self.body);
            Ok(PathBuf::from(format!("/fake/{}", bodies.len())))
        }
    }

    struct Shared(Arc<FakeCache>);

    impl Cache for Shared {
        fn get_local(&self, action_id: &ActionId) -> Local {
            if action_id.0[0] == 0 { Local::Miss } else { Local::TryRemote }
        }

        fn get_remote(self: Arc<Self>, action_id: ActionId) -> BoxFuture<'static, Option<Hit>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(u64::from(action_id.0[0]))).await;
                Some(Hit {
                    output_id: OutputId([action_id.0[0]; 32]),
                    size: 1,
                    time_unix_nanos: 0,
                    disk_path: format!("/fake/{}", action_id.0[0]),
                })
            })
        }

        fn begin_put(&self, _: ActionId, _: OutputId, _: u64) -> Result<Box<dyn BodySink>, String> {
            Ok(Box::new(FakeSink { cache: Arc::clone(&self.0), body: Vec::new() }))
        }

        fn close(self: Arc<Self>) -> BoxFuture<'static, ()> {
            Box::pin(async move {
                *self.0.closed.lock().unwrap() = true;
            })
        }
    }

    /// Hands out its input a few bytes per read, as a pipe under load may.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let len = self.step.min(buf.len()).min(self.data.len() - self.pos);
            buf[..len].copy_from_slice(&self.data[self.pos..self.pos + len]);
            self.pos += len;
            Ok(len)
        }
    }

    #[derive(Clone, Default)]
    struct Output(Arc<Mutex<Vec<u8>>>);

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn get(id: i64, action: u8) -> String {
        format!("{{\"ID\":{id},\"Command\":\"get\",\"ActionID\":\"{}\"}}\n\n", STANDARD.encode([action; 32]))
    }

    fn put(id: i64, body: &[u8]) -> String {
        format!(
            "{{\"ID\":{id},\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\",\"BodySize\":{}}}\n\n\"{}\"\n",
            STANDARD.encode([1; 32]),
            STANDARD.encode([2; 32]),
            body.len(),
            STANDARD.encode(body)
        )
    }

    const CLOSE: &str = "{\"ID\":99,\"Command\":\"close\"}\n\n";

    async fn run(
        input: String,
        step: usize,
    ) -> (Result<(), ServeError>, Vec<serde_json::Value>, Arc<FakeCache>) {
        let fake = Arc::new(FakeCache::default());
        let output = Output::default();
        let trickle = Trickle { data: input.into_bytes(), pos: 0, step };
        let result = serve(trickle, output.clone(), Arc::new(Shared(Arc::clone(&fake)))).await;
        let text = output.0.lock().unwrap().clone();
        let lines = text.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        let responses = lines.map(|line| serde_json::from_slice(line).unwrap()).collect();
        (result, responses, fake)
    }

    fn ids(responses: &[serde_json::Value]) -> Vec<i64> {
        responses.iter().map(|r| r["ID"].as_i64().unwrap()).collect()
    }

    #[tokio::test]
    async fn answers_arrive_as_soon_as_ready_in_any_order() {
        // Lookups of 200, 100 and 1 ms, then a local miss: answered fastest first, close last.
        let input = format!("{}{}{}{}{CLOSE}", get(1, 200), get(2, 100), get(3, 1), get(4, 0));
        let (result, responses, fake) = run(input, 1 << 20).await;
        result.unwrap();
        assert_eq!(responses[0]["KnownCommands"], serde_json::json!(["get", "put", "close"]));
        assert_eq!(ids(&responses), vec![0, 4, 3, 2, 1, 99]);
        assert_eq!(responses[1]["Miss"], true);
        assert_eq!(responses[4]["DiskPath"], "/fake/200");
        assert!(*fake.closed.lock().unwrap());
    }

    #[tokio::test]
    async fn a_put_body_split_across_reads_arrives_whole() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let input = format!("{}{}{CLOSE}", put(1, &body), get(2, 0));
        let (result, responses, fake) = run(input, 7).await;
        result.unwrap();
        assert_eq!(ids(&responses), vec![0, 1, 2, 99]);
        assert_eq!(responses[1]["DiskPath"], "/fake/1");
        assert_eq!(fake.bodies.lock().unwrap().as_slice(), &[body]);
    }

    #[tokio::test]
    async fn malformed_input_ends_the_session_with_an_error() {
        let input = format!("{}{{\"ID\":2,\"Command\":\"get\",\"ActionID\":\"short\"}}\n", get(1, 0));
        let (result, _, _) = run(input, 1 << 20).await;
        let err = result.unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("ActionID"), "{err}");
        let (result, _, _) = run(format!("{}{{\"ID\":2,\"Comm", get(1, 0)), 5).await;
        assert!(result.unwrap_err().to_string().contains("input ended inside a request"));
    }

    #[tokio::test]
    async fn unknown_commands_get_an_error_answer() {
        let input = format!("{{\"ID\":1,\"Command\":\"get2\"}}\n{CLOSE}");
        let (result, responses, _) = run(input, 1 << 20).await;
        result.unwrap();
        assert!(responses[1]["Err"].as_str().unwrap().contains("unknown command"));
    }
}
