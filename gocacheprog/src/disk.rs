//! The local disk tier: the files the go command opens through `DiskPath`.
//!
//! Layout under an absolute root:
//! - `o/<2 hex>/<OutputID hex>`: bodies. Mode 0755 (Go runs cached test binaries straight from
//!   here), no extension (cgo tools choke on one, golang/go#74451), never rewritten once present.
//! - `a/<2 hex>/<name>`: one line, `<OutputID hex> <size> <time unix nanos>`. The name is the
//!   ActionID in hex for the default namespace, and SHA-256 of the namespace and ActionID for
//!   any other, so a runner that builds in several namespaces keeps their entries apart (as
//!   cached does): one namespace never hits what another recorded, and uploads its own. Bodies
//!   are shared; their names are their SHA-256, checked when the go command puts them. A body
//!   that comes from cached is checked against the CAS digest its entry names instead (cached
//!   checked the SHA-256 when the entry was written; see `docs/gocacheprog.md`).
//!   A session that may build untrusted code (`--read-only`) records under names salted
//!   apart again ([`DiskTier::untrusted`]): it reads what trusted sessions recorded, but they
//!   never read what it recorded.
//! - `.part-*` beside them: files being written. `trim.txt`: its mtime is the last trim.
//!
//! Several go processes may share a root at once: every file is written under a temporary
//! name in its own directory and appears whole by an atomic rename (bodies by a no-clobber
//! one), so a reader sees a complete file or none. Renaming within one directory spares the
//! kernel's file-system-wide lock on cross-directory renames, which concurrent writers (the
//! preload's threads, the go command's puts, other go processes) would otherwise queue on. Nothing is fsynced,
//! as in Go's own cache: a power cut may lose recent entries; the size check on lookup drops an
//! entry whose body did not survive. A write that finds the disk full makes room first (see
//! [`super::room`]).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use proto::{ActionId, Digest, OutputId};
use sha2::{Digest as _, Sha256};

use super::room::Room;
use super::trim::{self, Freed, TEMP_PREFIX, TRIM_PROTECT};

/// A used file's mtime is refreshed (for LRU trimming) only when older than this, so hits do
/// not each cost a metadata write.
const TOUCH_AFTER: Duration = Duration::from_secs(3600);
/// How often a session's close looks at the tier's total size.
const TRIM_INTERVAL: Duration = Duration::from_secs(3600);
/// Trimming stops once the tier is below this fraction of its cap, so it does not run again
/// at once.
const TRIM_LOW_WATER: f64 = 0.9;
/// Longer than any record (`<64 hex> <size> <time>`, about 100 bytes).
const RECORD_MAX: usize = 256;

/// An action's entry as the local tier records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub output_id: OutputId,
    pub size: u64,
    pub time_unix_nanos: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("body of {size} bytes hashes to {actual}, not to its OutputID {expected}")]
    WrongBody { size: u64, expected: OutputId, actual: String },
    #[error("body has digest {actual}, not the digest {expected} its entry names")]
    WrongDigest { expected: Digest, actual: Digest },
    #[error("body has {actual} bytes, not the {expected} announced")]
    WrongSize { expected: u64, actual: u64 },
}

impl From<trim::ListError> for DiskError {
    fn from(err: trim::ListError) -> Self {
        Self::Io { path: err.path, source: err.source }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io { path: path.to_owned(), source }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct DiskTier {
    root: PathBuf,
    max_size: u64,
    room: Arc<Room>,
    /// Salts record names in a namespace other than the default ([`DiskTier::in_namespace`]).
    namespace_salt: Option<[u8; 32]>,
    /// Where an untrusted session keeps its records ([`DiskTier::untrusted`]); unset for a
    /// trusted one, or one whose trust is not known yet.
    untrusted: OnceLock<Untrusted>,
    /// What a session whose trust is not known yet recorded, held until it is
    /// ([`DiskTier::awaiting_trust`], [`DiskTier::settle`]); `None` once known.
    undecided: Mutex<Option<HashMap<ActionId, Entry>>>,
}

/// Where an untrusted session's records go.
enum Untrusted {
    /// Salted with the scope its sessions share.
    Scoped([u8; 32]),
    /// In memory, which no other session may read, so none pile up on disk where nothing
    /// would ever read them.
    Own(Mutex<HashMap<ActionId, Entry>>),
}

/// The replicas `server` names (`--server`, several separated by commas), each once and in
/// one order, so that the jobs of one deployment name it alike.
pub fn server_identity(server: &str) -> String {
    let mut replicas: Vec<String> = server
        .split(',')
        .map(|replica| replica.trim().trim_end_matches('/').to_ascii_lowercase())
        .filter(|replica| !replica.is_empty())
        .collect();
    replicas.sort_unstable();
    replicas.dedup();
    replicas.join(",")
}

impl DiskTier {
    /// Opens (creating) the tier at `root`, which becomes absolute.
    pub fn open(root: &Path, max_size: u64) -> Result<Self, DiskError> {
        for sub in ["o", "a"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        }
        let root = fs::canonicalize(root).map_err(io_at(root))?;
        if root.to_str().is_none() {
            // DiskPath travels in JSON, which cannot carry a non-UTF-8 path.
            let source = io::Error::new(io::ErrorKind::InvalidInput, "the path must be valid UTF-8");
            return Err(DiskError::Io { path: root, source });
        }
        Ok(Self {
            room: Arc::new(Room::new(root.clone())),
            root,
            max_size,
            namespace_salt: None,
            untrusted: OnceLock::new(),
            undecided: Mutex::new(None),
        })
    }

    /// Keeps the records of `namespace` on `server` (the replicas the session was told to
    /// use; `None`: none, a local session) apart from every other namespace's and server's: a
    /// session vouches for what it records, and lands, by its own server's word, which says
    /// nothing of what another deployment's namespace of the same name holds. A local session
    /// in the default namespace (`""` or `default`, as cached reads them) keeps the plain
    /// layout of earlier versions.
    pub fn in_namespace(mut self, server: Option<&str>, namespace: &str) -> Self {
        let default = namespace.is_empty() || namespace == "default";
        self.namespace_salt = (server.is_some() || !default).then(|| {
            let mut salt = Sha256::new();
            salt.update(b"cachectl gocacheprog local records\0");
            if let Some(server) = server {
                salt.update(b"server\0");
                salt.update(server_identity(server).as_bytes());
                salt.update(b"\0");
            }
            salt.update(if default { "" } else { namespace }.as_bytes());
            salt.finalize().into()
        });
        self
    }

    /// Keeps what this session records apart from what every other session reads: the go
    /// command records whatever its build produced under action IDs that do not cover every
    /// file a compile reads (a header an assembly file includes from outside its package), so
    /// an untrusted build could otherwise leave an object that a build of other sources then
    /// takes as its own: a trusted one, which uploads it, or another untrusted one (another
    /// pull request's). Sessions naming the same `scope` (one pull request's go commands)
    /// share their records; without one, a session's records are its own and stay in memory.
    /// Lookups still find trusted records, after the session's own; what lands from cached is
    /// recorded as trusted sessions record it ([`DiskTier::record_vouched`]). Call after
    /// [`DiskTier::in_namespace`].
    pub fn untrusted(self, scope: Option<&str>) -> Self {
        let _ = self.untrusted.set(self.untrusted_records(scope));
        self
    }

    fn untrusted_records(&self, scope: Option<&str>) -> Untrusted {
        match scope {
            Some(scope) => {
                let mut salt = Sha256::new();
                salt.update(b"cachectl gocacheprog untrusted records\0");
                salt.update(self.namespace_salt.unwrap_or_default());
                salt.update(scope.as_bytes());
                Untrusted::Scoped(salt.finalize().into())
            }
            None => Untrusted::Own(Mutex::default()),
        }
    }

    /// A session told it is trusted whose token cached may still refuse writes (a pull
    /// request's CI job run without `--read-only`): what it records is held in memory until
    /// [`DiskTier::settle`] says which it is, so nothing it built is ever where trusted
    /// sessions read before that is known.
    pub fn awaiting_trust(self) -> Self {
        *lock(&self.undecided) = Some(HashMap::new());
        self
    }

    /// Ends [`DiskTier::awaiting_trust`]: a trusted session writes what it held where trusted
    /// sessions read; an untrusted one keeps it as `untrusted(scope)` would have. Once only.
    pub fn settle(&self, trusted: bool, scope: Option<&str>) {
        // Under the lock, so a record either joins what is held or sees the trust settled.
        let mut undecided = lock(&self.undecided);
        let Some(held) = undecided.take() else { return };
        if !trusted {
            let _ = self.untrusted.set(self.untrusted_records(scope));
        }
        for (action_id, entry) in held {
            // A record lost here is a miss later: a cache may forget.
            let _ = self.record_settled(&action_id, &entry);
        }
    }

    fn salt_of_untrusted(&self) -> Option<&[u8; 32]> {
        match self.untrusted.get() {
            Some(Untrusted::Scoped(salt)) => Some(salt),
            _ => None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn output_path(&self, output_id: &OutputId) -> PathBuf {
        sharded(&self.root.join("o"), &output_id.to_string())
    }

    /// Where this session records an action (unless it keeps its records in memory).
    fn action_path(&self, action_id: &ActionId) -> PathBuf {
        self.record_path(self.salt_of_untrusted().or(self.namespace_salt.as_ref()), action_id)
    }

    /// Where this session looks an action up: its own records first, then trusted ones.
    fn lookup_paths(&self, action_id: &ActionId) -> impl Iterator<Item = PathBuf> + '_ {
        let untrusted = self.salt_of_untrusted().map(|salt| self.record_path(Some(salt), action_id));
        untrusted.into_iter().chain([self.record_path(self.namespace_salt.as_ref(), action_id)])
    }

    fn record_path(&self, salt: Option<&[u8; 32]>, action_id: &ActionId) -> PathBuf {
        let name = match salt {
            None => *action_id,
            Some(salt) => {
                ActionId(Sha256::new().chain_update(salt).chain_update(action_id.0).finalize().into())
            }
        };
        sharded(&self.root.join("a"), &name.to_string())
    }

    /// The entry and body path of an action, if both are here and the body has its size.
    /// Every hit of the go command comes through here, so it costs as few system calls as it
    /// can: the record's and the body's metadata are each read once, and reused for the LRU
    /// touch.
    pub fn lookup(&self, action_id: &ActionId) -> Result<Option<(Entry, PathBuf)>, DiskError> {
        if let Some(entry) = self.own_record(action_id)
            && let Some((body, _)) = self.body_metadata(&entry.output_id, entry.size)
        {
            return Ok(Some((entry, body)));
        }
        for record in self.lookup_paths(action_id) {
            if let Some(found) = self.lookup_at(&record)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Whether this session may answer with an entry whose body is at `body` (`size` bytes),
    /// wherever it was recorded: one that trusts none of its own work takes no test result
    /// keyed by file times (see [`crate::testlog`]) and no index of go's packages (keyed by
    /// them too, [`crate::goindex`]), not even one its own scope recorded (a pull request's
    /// earlier push, whose file list then computes main's inputs from forged times). `None`
    /// while the session's trust is not known yet and the body is such a log or index.
    pub fn takes(&self, body: &Path, size: u64) -> Option<bool> {
        let (undecided, untrusted) = {
            // Under the lock, which `settle` holds while it sets the trust.
            let held = lock(&self.undecided);
            (held.is_some(), self.untrusted.get().is_some())
        };
        if (!undecided && !untrusted) || !keyed_by_file_times(body, size) {
            return Some(true);
        }
        (!undecided).then_some(false)
    }

    fn lookup_at(&self, record: &Path) -> Result<Option<(Entry, PathBuf)>, DiskError> {
        let mut file = match File::open(record) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_at(record)(err)),
        };
        // A record is one short line; a single read takes it whole (it was written whole).
        let mut line = [0u8; RECORD_MAX];
        let len = file.read(&mut line).map_err(io_at(record))?;
        let Some(entry) = std::str::from_utf8(&line[..len]).ok().and_then(parse_entry) else {
            return Ok(None); // Unreadable records are misses; the next put rewrites them.
        };
        let Some((body, body_metadata)) = self.body_metadata(&entry.output_id, entry.size) else {
            return Ok(None);
        };
        if let Ok(record_metadata) = file.metadata() {
            touch_if_old(&file, &record_metadata);
        }
        if is_old(&body_metadata)
            && let Ok(body_file) = File::open(&body)
        {
            touch_if_old(&body_file, &body_metadata);
        }
        Ok(Some((entry, body)))
    }

    /// Whether an entry for the action is recorded here (its body is not looked at).
    pub fn has_entry(&self, action_id: &ActionId) -> bool {
        self.own_record(action_id).is_some()
            || self.lookup_paths(action_id).any(|record| fs::symlink_metadata(record).is_ok())
    }

    /// What this session recorded where only it looks: in memory, held or its own.
    fn own_record(&self, action_id: &ActionId) -> Option<Entry> {
        if let Some(held) = lock(&self.undecided).as_ref() {
            return held.get(action_id).copied();
        }
        match self.untrusted.get() {
            Some(Untrusted::Own(records)) => lock(records).get(action_id).copied(),
            _ => None,
        }
    }

    /// The body's path when it is present with the expected size.
    pub fn existing_output(&self, output_id: &OutputId, size: u64) -> Option<PathBuf> {
        self.body_metadata(output_id, size).map(|(path, _)| path)
    }

    fn body_metadata(&self, output_id: &OutputId, size: u64) -> Option<(PathBuf, fs::Metadata)> {
        let path = self.output_path(output_id);
        let metadata = fs::metadata(&path).ok()?;
        (metadata.is_file() && metadata.len() == size).then_some((path, metadata))
    }

    /// Records an action's entry (replacing an older one: a rebuild may produce new output).
    pub fn record(&self, action_id: &ActionId, entry: &Entry) -> Result<(), DiskError> {
        if let Some(held) = lock(&self.undecided).as_mut() {
            held.insert(*action_id, *entry);
            return Ok(());
        }
        self.record_settled(action_id, entry)
    }

    fn record_settled(&self, action_id: &ActionId, entry: &Entry) -> Result<(), DiskError> {
        if let Some(Untrusted::Own(records)) = self.untrusted.get() {
            lock(records).insert(*action_id, *entry);
            return Ok(());
        }
        self.record_at(self.action_path(action_id), entry)
    }

    /// Records an entry cached vouched for (it checked the OutputID when the entry was put,
    /// and the body landed against its digest) where trusted sessions record: it is what they
    /// would have landed, whichever session landed it. Not go's index of another machine's
    /// files ([`crate::goindex`]): returns whether it was recorded.
    /// `head`: the body's first bytes where the caller saw them as they landed, else it is read.
    pub fn record_vouched(
        &self,
        action_id: &ActionId,
        entry: &Entry,
        head: Option<&[u8]>,
    ) -> Result<bool, DiskError> {
        let index = match head {
            Some(head) => crate::goindex::starts_index(head),
            None => crate::goindex::is_index(&self.output_path(&entry.output_id), entry.size),
        };
        if index {
            return Ok(false);
        }
        self.record_at(self.record_path(self.namespace_salt.as_ref(), action_id), entry)?;
        Ok(true)
    }

    fn record_at(&self, path: PathBuf, entry: &Entry) -> Result<(), DiskError> {
        let line = format!("{} {} {}\n", entry.output_id, entry.size, entry.time_unix_nanos);
        self.room
            .retry(|| {
                let mut temp = temp_beside(&path)?;
                temp.write_all(line.as_bytes())?;
                temp.persist(&path).map(drop).map_err(|err| err.error)
            })
            .map_err(io_at(&path))
    }

    /// A writer for a body from cached, stored under `output_id` once it has `digest` (BLAKE3,
    /// the one hash of the read path: cached vouched for the OutputID when the entry was put).
    pub fn landing_writer(&self, output_id: OutputId, digest: Digest) -> Result<BodyWriter, DiskError> {
        self.writer(output_id, digest.size, Check::digest(digest))
    }

    /// [`DiskTier::landing_writer`] for a body the caller has just found absent, without
    /// looking again. Should another process land it meanwhile, theirs stays (no-clobber commit).
    pub fn absent_landing_writer(
        &self,
        output_id: OutputId,
        digest: Digest,
    ) -> Result<BodyWriter, DiskError> {
        self.absent_writer(output_id, digest.size, Check::digest(digest))
    }

    fn writer(&self, output_id: OutputId, size: u64, check: Check) -> Result<BodyWriter, DiskError> {
        match self.existing_output(&output_id, size) {
            // Not rewritten: the go command may have it open. The incoming bytes are still
            // hashed, so a wrong body is still refused.
            Some(dest) => Ok(BodyWriter::new(None, Arc::clone(&self.room), dest, output_id, size, check)),
            None => self.absent_writer(output_id, size, check),
        }
    }

    fn absent_writer(&self, output_id: OutputId, size: u64, check: Check) -> Result<BodyWriter, DiskError> {
        let dest = self.output_path(&output_id);
        let file = self.room.retry(|| temp_beside(&dest)).map_err(io_at(&dest))?;
        Ok(BodyWriter::new(Some(file), Arc::clone(&self.room), dest, output_id, size, check))
    }

    /// A writer for a body the go command put: also computes its CAS digest, for the upload.
    /// The body must hash (SHA-256) to the OutputID the go command gave, as cached will check.
    pub fn put_writer(&self, output_id: OutputId, size: u64) -> Result<DigestingWriter, DiskError> {
        let body = self.writer(output_id, size, Check::OutputId(Box::default()))?;
        Ok(DigestingWriter { body, blake3: blake3::Hasher::new() })
    }

    /// Trims to the size cap unless a trim ran within `TRIM_INTERVAL`. Returns bytes removed.
    /// A tier without a stamp is new (the stamp is written at the first close): it starts its
    /// interval instead, because the go command waits for close, and a fresh runner's tier
    /// would otherwise be listed file by file at the end of every build.
    pub fn trim_if_due(&self) -> Result<u64, DiskError> {
        let stamp = self.root.join("trim.txt");
        let now = SystemTime::now();
        let last = match fs::metadata(&stamp).and_then(|m| m.modified()) {
            Ok(last) => last,
            Err(_) => return fs::write(&stamp, b"").map(|()| 0).map_err(io_at(&stamp)),
        };
        if now.duration_since(last).unwrap_or_default() < TRIM_INTERVAL {
            return Ok(0);
        }
        fs::write(&stamp, b"").map_err(io_at(&stamp))?;
        self.trim(now.checked_sub(TRIM_PROTECT).unwrap_or(SystemTime::UNIX_EPOCH))
    }

    /// Removes the least recently used files until the tier is under its low-water mark, never
    /// touching files used after `protect_after`. Also clears abandoned temp files.
    pub fn trim(&self, protect_after: SystemTime) -> Result<u64, DiskError> {
        let files = trim::list_entries(&self.root, protect_after, &mut Freed::default())?;
        let total: u64 = files.iter().map(|f| f.size).sum();
        if total <= self.max_size {
            return Ok(0);
        }
        let target = (self.max_size as f64 * TRIM_LOW_WATER) as u64;
        Ok(trim::remove_oldest(files, total - target, protect_after).bytes)
    }
}

/// What a body must hash to before it appears: one hash per byte either way.
enum Check {
    /// SHA-256 gives the OutputID: what the go command puts (it names its outputs so).
    OutputId(Box<Sha256>),
    /// BLAKE3 gives the CAS digest cached's entry names: what lands from cached.
    Digest(Box<blake3::Hasher>, Digest),
}

impl Check {
    fn digest(expected: Digest) -> Self {
        Self::Digest(Box::new(blake3::Hasher::new()), expected)
    }

    fn update(&mut self, piece: &[u8]) {
        match self {
            Self::OutputId(sha256) => sha256.update(piece),
            Self::Digest(blake3, _) => {
                blake3.update(piece);
            }
        }
    }

    fn verify(self, output_id: OutputId, size: u64) -> Result<(), DiskError> {
        match self {
            Self::OutputId(sha256) => {
                let actual: [u8; 32] = sha256.finalize().into();
                if actual != output_id.0 {
                    let actual = OutputId(actual).to_string();
                    return Err(DiskError::WrongBody { size, expected: output_id, actual });
                }
            }
            Self::Digest(blake3, expected) => {
                let actual = Digest::from_hasher(&blake3, size);
                if actual != expected {
                    return Err(DiskError::WrongDigest { expected, actual });
                }
            }
        }
        Ok(())
    }
}

/// Receives a body, hashing it as it goes ([`Check`]); it appears only if the hash is right.
pub struct BodyWriter {
    file: Option<tempfile::NamedTempFile>,
    room: Arc<Room>,
    dest: PathBuf,
    output_id: OutputId,
    expected: u64,
    written: u64,
    check: Check,
}

impl BodyWriter {
    fn new(
        file: Option<tempfile::NamedTempFile>,
        room: Arc<Room>,
        dest: PathBuf,
        output_id: OutputId,
        size: u64,
        check: Check,
    ) -> Self {
        Self { file, room, dest, output_id, expected: size, written: 0, check }
    }

    pub fn write(&mut self, piece: &[u8]) -> Result<(), DiskError> {
        let offset = self.written;
        self.written += piece.len() as u64;
        if self.written > self.expected {
            return Err(DiskError::WrongSize { expected: self.expected, actual: self.written });
        }
        self.check.update(piece);
        if let Some(file) = self.file.as_mut() {
            let mut again = false;
            self.room
                .retry(|| {
                    // A failed write may have stored part of the piece: the retry starts over.
                    if std::mem::replace(&mut again, true) {
                        file.seek(SeekFrom::Start(offset))?;
                    }
                    file.write_all(piece)
                })
                .map_err(io_at(&self.dest))?;
        }
        Ok(())
    }

    /// Verifies the body and moves it into place; returns its path.
    pub fn commit(self) -> Result<PathBuf, DiskError> {
        if self.written != self.expected {
            return Err(DiskError::WrongSize { expected: self.expected, actual: self.written });
        }
        self.check.verify(self.output_id, self.written)?;
        if let Some(file) = self.file {
            set_executable(file.as_file()).map_err(io_at(&self.dest))?;
            match file.persist_noclobber(&self.dest) {
                Ok(_) => {}
                // Another process stored the same verified body first; theirs is as good, if it
                // is the body's size (it may be open, which some systems keep from replacing).
                // One that is not (cut short by a crash, damaged) is what made this body be
                // written: the verified one replaces it.
                Err(err) if err.error.kind() == io::ErrorKind::AlreadyExists => {
                    let there =
                        fs::metadata(&self.dest).is_ok_and(|m| m.is_file() && m.len() == self.expected);
                    if !there {
                        err.file.persist(&self.dest).map_err(|err| io_at(&self.dest)(err.error))?;
                    }
                }
                Err(err) => return Err(io_at(&self.dest)(err.error)),
            }
        }
        Ok(self.dest)
    }
}

/// A [`BodyWriter`] that also computes the body's CAS digest (BLAKE3), for uploading it.
pub struct DigestingWriter {
    body: BodyWriter,
    blake3: blake3::Hasher,
}

impl DigestingWriter {
    pub fn write(&mut self, piece: &[u8]) -> Result<(), DiskError> {
        self.body.write(piece)?;
        self.blake3.update(piece);
        Ok(())
    }

    /// Verifies the body and moves it into place; returns its path and CAS digest.
    pub fn commit(self) -> Result<(PathBuf, Digest), DiskError> {
        let digest = Digest::from_hasher(&self.blake3, self.body.written);
        Ok((self.body.commit()?, digest))
    }
}

fn sharded(dir: &Path, hex: &str) -> PathBuf {
    dir.join(&hex[..2]).join(hex)
}

/// A temporary file in `dest`'s directory, which is created on first use (so a write costs
/// no directory check once the shard exists).
fn temp_beside(dest: &Path) -> io::Result<tempfile::NamedTempFile> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let create = || tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(dir);
    match create() {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir)?;
            create()
        }
        result => result,
    }
}

fn parse_entry(text: &str) -> Option<Entry> {
    let mut fields = text.split_ascii_whitespace();
    let output_id = parse_hex32(fields.next()?)?;
    let size = fields.next()?.parse().ok()?;
    let time_unix_nanos = fields.next()?.parse().ok()?;
    Some(Entry { output_id: OutputId(output_id), size, time_unix_nanos })
}

/// 32 bytes written as 64 hex digits (nothing else: no sign, no spaces).
pub(crate) fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(hex).ok().map(|hash| *hash.as_bytes())
}

/// Refreshes the mtime that LRU trimming orders by. Best effort: a failure only makes the file
/// look older than it is.
fn touch_if_old(file: &File, metadata: &fs::Metadata) {
    if is_old(metadata) {
        let _ = file.set_modified(SystemTime::now());
    }
}

fn is_old(metadata: &fs::Metadata) -> bool {
    metadata
        .modified()
        .is_ok_and(|modified| SystemTime::now().duration_since(modified).unwrap_or_default() > TOUCH_AFTER)
}

#[cfg(unix)]
fn set_executable(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(0o755))
}

#[cfg(not(unix))]
fn set_executable(_file: &File) -> io::Result<()> {
    Ok(())
}

/// Whether the body at `body` (`size` bytes) is an answer the go command keyed by file times:
/// a test log naming files ([`crate::testlog`]) or an index of packages ([`crate::goindex`]).
/// Opened once: an untrusted session asks this of every hit. Unreadable counts as one.
fn keyed_by_file_times(body: &Path, size: u64) -> bool {
    let Ok(mut file) = File::open(body) else { return true };
    let mut head = Vec::with_capacity(16);
    if (&mut file).take(16).read_to_end(&mut head).is_err() {
        return true;
    }
    crate::goindex::starts_index(&head)
        || crate::testlog::body_keys_files_by_time(head.as_slice().chain(file), size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_id(body: &[u8]) -> OutputId {
        OutputId(Sha256::digest(body).into())
    }

    fn put(tier: &DiskTier, action: u8, body: &[u8]) -> PathBuf {
        let id = output_id(body);
        let mut writer = tier.put_writer(id, body.len() as u64).unwrap();
        for piece in body.chunks(3) {
            writer.write(piece).unwrap();
        }
        let (path, digest) = writer.commit().unwrap();
        assert_eq!(digest, Digest::of(body));
        let entry = Entry { output_id: id, size: body.len() as u64, time_unix_nanos: 7 };
        tier.record(&ActionId([action; 32]), &entry).unwrap();
        path
    }

    #[test]
    fn trusted_sessions_never_read_what_an_untrusted_one_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let trusted = || DiskTier::open(dir.path(), 1 << 30).unwrap().in_namespace(None, "main");
        let untrusted = || trusted().untrusted(Some("pr-1"));
        let (honest, other) = (ActionId([1; 32]), ActionId([2; 32]));
        let honest_body = put(&trusted(), 1, b"main's object");
        assert_eq!(untrusted().lookup(&honest).unwrap().map(|(_, path)| path), Some(honest_body.clone()));
        // An untrusted build records its own object under main's action, and a new one.
        let planted = put(&untrusted(), 1, b"a pull request's object");
        put(&untrusted(), 2, b"a pull request's other object");
        // The pull request's later go commands (its scope) find them.
        assert_eq!(untrusted().lookup(&honest).unwrap().map(|(_, path)| path), Some(planted));
        assert!(untrusted().has_entry(&other));
        assert_eq!(trusted().lookup(&honest).unwrap().map(|(_, path)| path), Some(honest_body.clone()));
        assert!(trusted().lookup(&other).unwrap().is_none() && !trusted().has_entry(&other));
        // Another pull request's untrusted sessions, scoped or not, never read them either.
        for other_session in [trusted().untrusted(Some("pr-2")), trusted().untrusted(None)] {
            assert_eq!(
                other_session.lookup(&honest).unwrap().map(|(_, path)| path),
                Some(honest_body.clone())
            );
            assert!(!other_session.has_entry(&other));
        }
        // A session without a scope reads its own records, and no later one does; they are
        // kept in memory, where they cannot pile up.
        let records = || {
            let shards = fs::read_dir(dir.path().join("a")).unwrap();
            shards.map(|shard| fs::read_dir(shard.unwrap().path()).unwrap().count()).sum::<usize>()
        };
        let before = records();
        let session = trusted().untrusted(None);
        put(&session, 4, b"one session's object");
        assert_eq!(records(), before);
        assert!(
            session.has_entry(&ActionId([4; 32])) && !trusted().untrusted(None).has_entry(&ActionId([4; 32]))
        );
        // The default namespace, unsalted for trusted sessions, is kept apart as well.
        let default = || DiskTier::open(dir.path(), 1 << 30).unwrap().in_namespace(None, "default");
        put(&default().untrusted(None), 3, b"planted in default");
        assert!(default().lookup(&ActionId([3; 32])).unwrap().is_none());
    }

    /// A session told it is trusted holds what it records until cached says whether its token
    /// may write: trusted, the records land where trusted sessions read; not (a pull
    /// request's job run without --read-only), they stay its own, as --read-only keeps them.
    #[test]
    fn records_wait_for_the_sessions_trust_to_be_known() {
        let dir = tempfile::tempdir().unwrap();
        let trusted = || DiskTier::open(dir.path(), 1 << 30).unwrap().in_namespace(None, "main");
        let (first, second) = (ActionId([1; 32]), ActionId([2; 32]));
        for (told, scope) in [(false, None), (false, Some("pr-1")), (true, None)] {
            let session = trusted().awaiting_trust();
            put(&session, 1, b"what the session built");
            assert!(session.has_entry(&first) && !trusted().has_entry(&first), "told {told}");
            session.settle(told, scope);
            put(&session, 2, b"what it built after");
            assert!(session.has_entry(&first) && session.has_entry(&second), "told {told}");
            assert_eq!(trusted().has_entry(&first), told, "told {told}");
            assert_eq!(trusted().has_entry(&second), told, "told {told}");
            let same_scope = scope.map(|scope| trusted().untrusted(Some(scope)));
            assert!(same_scope.is_none_or(|pr| pr.has_entry(&first) && pr.has_entry(&second)));
        }
    }

    /// A session that trusts none of its own work takes no test log naming files from any
    /// record, its scope's included; one whose trust is not known yet cannot say yet.
    #[test]
    fn test_logs_naming_files_are_taken_by_trusted_sessions_only() {
        let dir = tempfile::tempdir().unwrap();
        let trusted = || DiskTier::open(dir.path(), 1 << 30).unwrap().in_namespace(None, "main");
        let log = put(&trusted(), 1, b"# test log\nopen testdata/golden.txt\n");
        let env_only = put(&trusted(), 2, b"# test log\ngetenv HOME\n");
        let scoped = trusted().untrusted(Some("pr-1"));
        let own_log = put(&scoped, 3, b"# test log\nstat go.mod\n");
        let size = |path: &Path| fs::metadata(path).unwrap().len();
        assert_eq!(trusted().takes(&log, size(&log)), Some(true));
        for session in [trusted().untrusted(None), trusted().untrusted(Some("pr-1"))] {
            assert_eq!(session.takes(&log, size(&log)), Some(false));
            assert_eq!(session.takes(&own_log, size(&own_log)), Some(false));
            assert_eq!(session.takes(&env_only, size(&env_only)), Some(true));
        }
        let undecided = trusted().awaiting_trust();
        assert_eq!(undecided.takes(&log, size(&log)), None);
        assert_eq!(undecided.takes(&env_only, size(&env_only)), Some(true));
        undecided.settle(true, None);
        assert_eq!(undecided.takes(&log, size(&log)), Some(true));
    }

    /// go's index of a package is keyed by its files' names, sizes and times: main's, taken by
    /// a pull request's session for a tree of the same names, sizes and times, listed main's
    /// files (its own file was never compiled). Like test logs naming files, an untrusted
    /// session takes none from any record.
    #[test]
    fn go_index_entries_are_taken_by_trusted_sessions_only() {
        let dir = tempfile::tempdir().unwrap();
        let trusted = || DiskTier::open(dir.path(), 1 << 30).unwrap().in_namespace(None, "main");
        let index = put(&trusted(), 1, b"go index v2\n\0\0\0\0main's files");
        let scoped = trusted().untrusted(Some("pr-1"));
        let own_index = put(&scoped, 2, b"go index v2\n\0\0\0\0the pull request's earlier files");
        let object = put(&trusted(), 3, b"!<arch>\n__.PKGDEF");
        let size = |path: &Path| fs::metadata(path).unwrap().len();
        assert_eq!(trusted().takes(&index, size(&index)), Some(true));
        for session in [trusted().untrusted(None), trusted().untrusted(Some("pr-1"))] {
            assert_eq!(session.takes(&index, size(&index)), Some(false));
            assert_eq!(session.takes(&own_index, size(&own_index)), Some(false));
            assert_eq!(session.takes(&object, size(&object)), Some(true));
        }
        assert_eq!(trusted().awaiting_trust().takes(&index, size(&index)), None);
    }

    #[test]
    fn namespaces_keep_their_records_apart_and_share_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let open =
            |namespace: &str| DiskTier::open(dir.path(), 1 << 30).unwrap().in_namespace(None, namespace);
        let team = open("team");
        let body = put(&team, 1, b"team's body");
        let action = ActionId([1; 32]);
        assert_eq!(open("team").lookup(&action).unwrap().map(|(_, path)| path), Some(body.clone()));
        for other in ["team2", "", "default"] {
            assert!(open(other).lookup(&action).unwrap().is_none(), "{other:?} sees team's record");
            assert!(!open(other).has_entry(&action), "{other:?}");
        }
        assert_eq!(open("team2").existing_output(&output_id(b"team's body"), 11), Some(body));
        // The default namespace, named or not, keeps the plain layout of earlier versions.
        put(&open(""), 2, b"plain");
        assert!(open("default").has_entry(&ActionId([2; 32])));
        assert!(dir.path().join("a/02").join(ActionId([2; 32]).to_string()).is_file());
    }

    /// A runner shared by the jobs of two deployments: a session writing namespace `main` on
    /// one cached (any caller may write on a runner-local one without tokens) recorded what
    /// main's sessions on the other then served as their own (an audit, end to end: the honest
    /// build printed the other tree's value, and its whole-build record spread it).
    #[test]
    fn records_of_one_server_are_not_read_by_sessions_of_another() {
        let dir = tempfile::tempdir().unwrap();
        let open =
            |server: Option<&str>| DiskTier::open(dir.path(), 1 << 30).unwrap().in_namespace(server, "main");
        let action = ActionId([1; 32]);
        let body = put(&open(Some("http://other:9092")), 1, b"another deployment's object");
        for server in [Some("http://central:9092"), None] {
            assert!(
                open(server).lookup(&action).unwrap().is_none(),
                "{server:?} read another server's record"
            );
        }
        // One deployment named alike by its jobs, replicas in any order.
        let replicas = open(Some("http://a:1, http://b:1/")).lookup(&action).unwrap();
        assert!(replicas.is_none());
        put(&open(Some("http://a:1,http://b:1")), 2, b"the deployment's object");
        assert!(open(Some("http://B:1/,http://a:1")).has_entry(&ActionId([2; 32])));
        assert_eq!(
            open(Some("http://central:9092")).existing_output(&output_id(b"another deployment's object"), 27),
            Some(body)
        );
    }

    /// The answer errs on the side of running the test.
    #[test]
    fn a_body_that_cannot_be_read_counts_as_keyed_by_file_times() {
        assert!(keyed_by_file_times(Path::new("/nonexistent/body"), 100));
    }

    #[test]
    fn bodies_round_trip_as_absolute_executable_files() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(&dir.path().join("tier"), 1 << 30).unwrap();
        let path = put(&tier, 1, b"hello body");
        assert!(path.is_absolute());
        assert_eq!(path.extension(), None);
        assert_eq!(path.file_name().unwrap().to_str().unwrap(), output_id(b"hello body").to_string());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o755);
        }
        let (entry, found) = tier.lookup(&ActionId([1; 32])).unwrap().unwrap();
        assert_eq!((entry.size, entry.time_unix_nanos, found), (10, 7, path));
        assert!(tier.lookup(&ActionId([2; 32])).unwrap().is_none());
    }

    #[test]
    fn a_wrong_body_never_appears() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path(), 1 << 30).unwrap();
        let id = output_id(b"right");
        let mut writer = tier.put_writer(id, 5).unwrap();
        writer.write(b"wrong").unwrap();
        assert!(matches!(writer.commit(), Err(DiskError::WrongBody { .. })));
        assert!(!tier.output_path(&id).exists());
        let mut writer = tier.put_writer(id, 5).unwrap();
        assert!(matches!(writer.write(b"right!"), Err(DiskError::WrongSize { .. })));
        // A landing is checked against the entry's digest, whatever the OutputID says.
        let mut writer = tier.landing_writer(output_id(b"wrong"), Digest::of(b"right")).unwrap();
        writer.write(b"wrong").unwrap();
        assert!(matches!(writer.commit(), Err(DiskError::WrongDigest { .. })));
        assert!(!tier.output_path(&output_id(b"wrong")).exists());
        let mut writer = tier.landing_writer(id, Digest::of(b"right")).unwrap();
        writer.write(b"right").unwrap();
        assert_eq!(writer.commit().unwrap(), tier.output_path(&id));
    }

    #[test]
    fn present_bodies_are_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path(), 1 << 30).unwrap();
        let path = put(&tier, 1, b"same");
        let before = fs::metadata(&path).unwrap();
        put(&tier, 2, b"same");
        let after = fs::metadata(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(before.ino(), after.ino());
        }
        assert_eq!(before.modified().unwrap(), after.modified().unwrap());
    }

    #[test]
    fn a_hit_refreshes_old_files_for_lru_and_leaves_recent_ones() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path(), 1 << 30).unwrap();
        let body = put(&tier, 1, b"used");
        let record = tier.action_path(&ActionId([1; 32]));
        let long_ago = SystemTime::now() - 2 * TOUCH_AFTER;
        for path in [&body, &record] {
            File::open(path).unwrap().set_modified(long_ago).unwrap();
        }
        let mtime = |path: &Path| fs::metadata(path).unwrap().modified().unwrap();
        tier.lookup(&ActionId([1; 32])).unwrap().unwrap();
        assert!(mtime(&body) > long_ago + TOUCH_AFTER && mtime(&record) > long_ago + TOUCH_AFTER);
        let recent = SystemTime::now() - TOUCH_AFTER / 2;
        File::open(&body).unwrap().set_modified(recent).unwrap();
        tier.lookup(&ActionId([1; 32])).unwrap().unwrap();
        assert_eq!(mtime(&body), recent, "no metadata write for a file used within the hour");
    }

    #[test]
    fn an_entry_whose_body_is_gone_or_short_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path(), 1 << 30).unwrap();
        let path = put(&tier, 1, b"vanishing");
        fs::write(&path, b"short").unwrap();
        assert!(tier.lookup(&ActionId([1; 32])).unwrap().is_none());
        fs::remove_file(&path).unwrap();
        assert!(tier.lookup(&ActionId([1; 32])).unwrap().is_none());
    }

    /// A body file cut short (a crash: nothing is synced) or damaged makes its entry a miss,
    /// and the body fetched or built again replaces it: the path handed to the go command is
    /// never the damaged file.
    #[test]
    fn a_damaged_body_is_replaced_by_the_next_verified_one() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path(), 1 << 30).unwrap();
        let path = put(&tier, 1, b"whole body");
        fs::write(&path, b"").unwrap();
        assert!(tier.lookup(&ActionId([1; 32])).unwrap().is_none());
        let mut writer = tier.landing_writer(output_id(b"whole body"), Digest::of(b"whole body")).unwrap();
        writer.write(b"whole body").unwrap();
        assert_eq!(writer.commit().unwrap(), path);
        assert_eq!(fs::read(&path).unwrap(), b"whole body");
        fs::write(&path, b"short").unwrap();
        assert_eq!(put(&tier, 1, b"whole body"), path);
        assert_eq!(fs::read(&path).unwrap(), b"whole body");
    }

    #[test]
    fn writes_recreate_a_removed_shard_and_trim_clears_abandoned_parts() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path(), 1 << 30).unwrap();
        let path = put(&tier, 1, b"first");
        let shard = path.parent().unwrap().to_owned();
        fs::remove_dir_all(&shard).unwrap();
        assert_eq!(put(&tier, 1, b"first"), path);
        // A writer that died mid-body leaves its part beside the entries; a legacy tmp/ too.
        let abandoned = shard.join(format!("{TEMP_PREFIX}dead"));
        fs::write(&abandoned, b"half a bo").unwrap();
        let legacy = dir.path().join(trim::LEGACY_TEMP_DIR).join(".part-old");
        fs::create_dir_all(legacy.parent().unwrap()).unwrap();
        fs::write(&legacy, b"old").unwrap();
        tier.trim(SystemTime::now() - Duration::from_secs(60)).unwrap();
        assert!(abandoned.exists() && legacy.exists(), "recent parts may still be being written");
        assert_eq!(tier.trim(SystemTime::now() + Duration::from_secs(60)).unwrap(), 0);
        assert!(!abandoned.exists() && !legacy.exists());
        assert!(tier.lookup(&ActionId([1; 32])).unwrap().is_some(), "under the cap, entries stay");
    }

    #[test]
    fn a_new_tier_starts_its_trim_interval_and_an_old_stamp_trims() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path(), 100).unwrap();
        let body = put(&tier, 1, &[1u8; 1000]);
        let long_ago = SystemTime::now() - 3 * TRIM_PROTECT;
        File::open(&body).unwrap().set_modified(long_ago).unwrap();
        assert_eq!(tier.trim_if_due().unwrap(), 0, "a new tier is not listed at its first close");
        assert!(body.exists());
        let stamp = dir.path().join("trim.txt");
        File::open(&stamp).unwrap().set_modified(long_ago).unwrap();
        assert_eq!(tier.trim_if_due().unwrap(), 1000);
        assert!(!body.exists());
    }

    #[test]
    fn trim_removes_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path(), 3000).unwrap();
        let old = put(&tier, 1, &[1u8; 1000]);
        let middle = put(&tier, 2, &[2u8; 1000]);
        let new = put(&tier, 3, &[3u8; 1000]);
        let base = SystemTime::now() - Duration::from_secs(10_000);
        for (i, path) in [&old, &middle, &new].into_iter().enumerate() {
            File::open(path).unwrap().set_modified(base + Duration::from_secs(i as u64 * 100)).unwrap();
        }
        // Over the cap by the action records: the oldest body goes, the rest stay.
        let removed = tier.trim(SystemTime::now()).unwrap();
        assert!(removed >= 1000, "{removed}");
        assert!(!old.exists());
        assert!(middle.exists() && new.exists());
        assert!(tier.lookup(&ActionId([1; 32])).unwrap().is_none());
        assert!(tier.lookup(&ActionId([3; 32])).unwrap().is_some());
        // Recently used files are protected even over the cap.
        let tight = DiskTier::open(dir.path(), 10).unwrap();
        tight.trim(base).unwrap();
        assert!(new.exists());
    }
}
