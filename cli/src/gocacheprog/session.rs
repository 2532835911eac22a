//! Session lists: what a go command used, remembered in cached so the next run of the same
//! command on a fresh runner can fetch it all before the go command asks (see [`super::preload`]).
//!
//! A list is keyed by the session key, a hash of what decides which actions a go command looks
//! up: the namespace, the go command's subcommand, the module it runs in, and the environment
//! that salts or selects ActionIDs (Go version, GOOS/GOARCH and arch levels, GOFLAGS, cgo,
//! experiments). It is stored as an ordinary Go action entry in the session's own namespace,
//! under the session key as ActionID: the go command never asks for that ID (its IDs are
//! SHA-256 of other inputs), a token that may write the namespace's entries may write its
//! lists, and no server change is needed. The entry's body is the list; its OutputID is the
//! list's SHA-256, checked like every other body.
//!
//! The key only chooses which list to fetch; a wrong or stale list costs bandwidth, never
//! correctness, because every preloaded body is verified against its OutputID.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use proto::{ActionId, FRAME_SIZE};
use sha2::{Digest as _, Sha256};

/// The start of every encoded list; a different version is simply not read.
const MAGIC: &[u8] = b"cachectl gocacheprog session list v1\n";
/// ActionID, size hint (u64 LE), age (sessions since last used).
const RECORD: usize = 32 + 8 + 1;
/// Entries in a list at most: large enough for `go test ./...` of a big module, small enough
/// that the list is one frame, so it comes back inline with its lookup.
pub const MAX_ENTRIES: usize = 20_000;
/// A listed action that later sessions with the same key did not use is dropped once this many
/// such sessions in a row wrote the list (e.g. `go build ./cmd/a` and `./cmd/b` share a key).
const MAX_AGE: u8 = 3;

const _: () = assert!(MAGIC.len() + MAX_ENTRIES * RECORD <= FRAME_SIZE);

/// Environment variables the go command sets for its cache program (it exports its whole
/// `go env`) that change which ActionIDs it computes.
const KEY_ENV: [&str; 16] = [
    "GOVERSION",
    "GOOS",
    "GOARCH",
    "GOFLAGS",
    "CGO_ENABLED",
    "GOEXPERIMENT",
    "GOAMD64",
    "GOARM",
    "GOARM64",
    "GO386",
    "GOMIPS",
    "GOMIPS64",
    "GOPPC64",
    "GORISCV64",
    "GOWASM",
    "GOFIPS140",
];

/// One listed action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub action_id: ActionId,
    /// Body size when the list was written: a hint for sizing fetches, never trusted.
    pub size: u64,
    /// Sessions with this key in a row that did not use it.
    pub age: u8,
}

/// What goes into a session key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyInputs {
    pub namespace: String,
    /// The go command's subcommand (`build`, `test`, `vet`, ...), when it can be told.
    pub subcommand: String,
    /// The module path from the go.mod at or above the working directory, or empty.
    pub module: String,
    pub env: Vec<(String, String)>,
}

impl KeyInputs {
    /// What this process sees: its environment (the go command's), its working directory (the
    /// go command's) and, on Linux, the go command's command line.
    pub fn from_process(namespace: &str) -> Self {
        let env = KEY_ENV
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|value| ((*name).to_owned(), value)))
            .collect();
        let module = std::env::current_dir().ok().and_then(|dir| module_path(&dir)).unwrap_or_default();
        Self {
            namespace: namespace.to_owned(),
            subcommand: parent_subcommand().unwrap_or_default(),
            module,
            env,
        }
    }

    pub fn key(&self) -> ActionId {
        let mut hash = Sha256::new();
        let mut field = |name: &str, value: &str| {
            for part in [name, value] {
                hash.update((part.len() as u64).to_le_bytes());
                hash.update(part.as_bytes());
            }
        };
        field("cachectl gocacheprog session key", "v1");
        field("namespace", &self.namespace);
        field("subcommand", &self.subcommand);
        field("module", &self.module);
        for (name, value) in &self.env {
            field(name, value);
        }
        ActionId(hash.finalize().into())
    }
}

/// The module path declared by the go.mod at or above `dir`.
pub fn module_path(dir: &Path) -> Option<String> {
    dir.ancestors().find_map(|dir| {
        let text = std::fs::read_to_string(dir.join("go.mod")).ok()?;
        Some(parse_module(&text).unwrap_or_default())
    })
}

fn parse_module(go_mod: &str) -> Option<String> {
    go_mod.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("module")?;
        if !rest.starts_with([' ', '\t', '"']) {
            return None;
        }
        let rest = rest.split("//").next()?.trim();
        Some(rest.trim_matches(|c| c == '"' || c == '`').to_owned())
    })
}

/// The subcommand of the go command that started us (`go build ...` gives `build`).
fn parent_subcommand() -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        let ppid = std::os::unix::process::parent_id();
        let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline")).ok()?;
        let args: Vec<String> =
            cmdline.split(|&b| b == 0).map(|arg| String::from_utf8_lossy(arg).into_owned()).collect();
        subcommand(&args)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// `go [-C dir] <subcommand> ...`: the subcommand, if `args` is a go command line.
fn subcommand(args: &[String]) -> Option<String> {
    let program = Path::new(args.first()?).file_name()?.to_str()?;
    if !program.starts_with("go") {
        return None;
    }
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        if arg == "-C" || arg == "--C" {
            rest.next();
        } else if !arg.starts_with('-') {
            return Some(arg.clone());
        }
    }
    None
}

pub fn encode(records: &[Record]) -> Vec<u8> {
    let records = &records[..records.len().min(MAX_ENTRIES)];
    let mut out = Vec::with_capacity(MAGIC.len() + records.len() * RECORD);
    out.extend_from_slice(MAGIC);
    for record in records {
        out.extend_from_slice(&record.action_id.0);
        out.extend_from_slice(&record.size.to_le_bytes());
        out.push(record.age);
    }
    out
}

/// Reads a list; `None` for anything that is not a well-formed list of this version.
pub fn decode(bytes: &[u8]) -> Option<Vec<Record>> {
    let body = bytes.strip_prefix(MAGIC)?;
    if body.len() % RECORD != 0 || body.len() / RECORD > MAX_ENTRIES {
        return None;
    }
    let records = body
        .chunks_exact(RECORD)
        .map(|chunk| Record {
            action_id: ActionId(chunk[..32].try_into().expect("32 bytes")),
            size: u64::from_le_bytes(chunk[32..40].try_into().expect("8 bytes")),
            age: chunk[40],
        })
        .collect();
    Some(records)
}

/// What this session used, in the order it first used it, and what it asked for in vain.
#[derive(Default)]
pub struct Recorder {
    state: Mutex<Recorded>,
}

#[derive(Default)]
struct Recorded {
    used: Vec<(ActionId, u64)>,
    index: HashMap<ActionId, usize>,
    missed: HashSet<ActionId>,
}

impl Recorder {
    /// An action this session found or stored, with its body size.
    pub fn used(&self, action_id: ActionId, size: u64) {
        let mut state = self.state.lock().unwrap_or_else(|poison| poison.into_inner());
        state.missed.remove(&action_id);
        if let Some(&at) = state.index.get(&action_id) {
            state.used[at].1 = size;
        } else if state.used.len() < MAX_ENTRIES {
            let at = state.used.len();
            state.used.push((action_id, size));
            state.index.insert(action_id, at);
        }
    }

    /// An action this session asked for and did not get: it is not worth preloading.
    pub fn missed(&self, action_id: ActionId) {
        let mut state = self.state.lock().unwrap_or_else(|poison| poison.into_inner());
        if !state.index.contains_key(&action_id) && state.missed.len() < MAX_ENTRIES {
            state.missed.insert(action_id);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.state.lock().unwrap_or_else(|poison| poison.into_inner()).used.is_empty()
    }

    /// The list to store after this session: what it used, in its order, then what the
    /// previous list held that this session neither used nor missed, one session older, until
    /// too old; at most [`MAX_ENTRIES`]. `None` when it would say the same as `previous`
    /// (same actions, same ages), so an unchanged list is not written again.
    pub fn merge(&self, previous: &[Record]) -> Option<Vec<Record>> {
        let state = self.state.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut merged: Vec<Record> =
            state.used.iter().map(|&(action_id, size)| Record { action_id, size, age: 0 }).collect();
        for record in previous {
            if merged.len() >= MAX_ENTRIES {
                break;
            }
            let id = &record.action_id;
            if state.index.contains_key(id) || state.missed.contains(id) || record.age + 1 >= MAX_AGE {
                continue;
            }
            merged.push(Record { age: record.age + 1, ..*record });
        }
        let ages = |records: &[Record]| -> HashMap<ActionId, u8> {
            records.iter().map(|record| (record.action_id, record.age)).collect()
        };
        (ages(&merged) != ages(previous)).then_some(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ActionId {
        ActionId([n; 32])
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn lists_round_trip_and_anything_else_is_refused() {
        let records = vec![
            Record { action_id: id(1), size: 7, age: 0 },
            Record { action_id: id(2), size: 1 << 40, age: 2 },
        ];
        let bytes = encode(&records);
        assert_eq!(decode(&bytes), Some(records));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(b"cachectl gocacheprog session list v2\n"), None);
        assert_eq!(decode(&encode(&[])), Some(vec![]));
    }

    #[test]
    fn keys_tell_commands_modules_and_platforms_apart() {
        let base = KeyInputs {
            namespace: "ci".into(),
            subcommand: "build".into(),
            module: "example.com/app".into(),
            env: vec![("GOOS".into(), "linux".into()), ("GOVERSION".into(), "go1.26.1".into())],
        };
        let mut keys = vec![base.key()];
        let mut vary = |change: &dyn Fn(&mut KeyInputs)| {
            let mut inputs = base.clone();
            change(&mut inputs);
            keys.push(inputs.key());
        };
        vary(&|k| k.namespace = "ci2".into());
        vary(&|k| k.subcommand = "vet".into());
        vary(&|k| k.module = "example.com/other".into());
        vary(&|k| k.env[0].1 = "darwin".into());
        vary(&|k| k.env[1].1 = "go1.26.2".into());
        // Length-prefixed fields: moving bytes between fields changes the key.
        vary(&|k| {
            k.namespace = "cib".into();
            k.subcommand = "uild".into();
        });
        let distinct: HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        assert_eq!(base.key(), base.clone().key());
    }

    #[test]
    fn the_go_command_line_gives_the_subcommand() {
        assert_eq!(subcommand(&strings(&["/usr/local/go/bin/go", "build", "./..."])), Some("build".into()));
        assert_eq!(subcommand(&strings(&["go", "-C", "sub", "vet", "./..."])), Some("vet".into()));
        assert_eq!(subcommand(&strings(&["/bin/sh", "-c", "x"])), None);
        assert_eq!(subcommand(&strings(&["go"])), None);
    }

    #[test]
    fn module_paths_come_from_go_mod() {
        assert_eq!(
            parse_module("// c\nmodule example.com/m // x\n\ngo 1.24\n"),
            Some("example.com/m".into())
        );
        assert_eq!(parse_module("module \"example.com/q\"\n"), Some("example.com/q".into()));
        assert_eq!(parse_module("modules x\n"), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("go.mod"), "module example.com/top\n").unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        assert_eq!(module_path(&dir.path().join("a/b")), Some("example.com/top".into()));
    }

    #[test]
    fn merging_keeps_this_session_first_ages_the_rest_and_drops_misses() {
        let previous = vec![
            Record { action_id: id(1), size: 1, age: 0 },
            Record { action_id: id(2), size: 2, age: 0 },
            Record { action_id: id(3), size: 3, age: MAX_AGE - 1 },
            Record { action_id: id(4), size: 4, age: 1 },
        ];
        let recorder = Recorder::default();
        recorder.used(id(5), 50);
        recorder.used(id(1), 10);
        recorder.missed(id(2));
        recorder.used(id(5), 55);
        let merged = recorder.merge(&previous).unwrap();
        assert_eq!(
            merged,
            vec![
                Record { action_id: id(5), size: 55, age: 0 },
                Record { action_id: id(1), size: 10, age: 0 },
                Record { action_id: id(4), size: 4, age: 2 },
            ]
        );
        // The same session again changes nothing, whatever the order: nothing to write.
        let again = Recorder::default();
        again.used(id(1), 10);
        again.used(id(5), 55);
        let unchanged: Vec<Record> = merged.iter().map(|r| Record { age: 0, ..*r }).take(2).collect();
        assert_eq!(again.merge(&unchanged), None);
        // A first session writes what it used.
        assert_eq!(again.merge(&[]).map(|list| list.len()), Some(2));
    }

    #[test]
    fn lists_stay_bounded() {
        let recorder = Recorder::default();
        for n in 0..(MAX_ENTRIES as u32 + 10) {
            let mut action = [0u8; 32];
            action[..4].copy_from_slice(&n.to_le_bytes());
            recorder.used(ActionId(action), 1);
        }
        let merged = recorder.merge(&[Record { action_id: id(9), size: 1, age: 0 }]).unwrap();
        assert_eq!(merged.len(), MAX_ENTRIES);
        assert!(encode(&merged).len() <= FRAME_SIZE);
    }
}
