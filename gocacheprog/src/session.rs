//! Session lists: what a go command used, remembered in cached so the next run of the same
//! command on a fresh runner can fetch it all before the go command asks (see [`super::preload`]).
//!
//! A session reads and writes two lists. The shared list is keyed by what decides which
//! actions a go command looks up: the namespace, the go command's subcommand, the module it
//! runs in, the environment that salts or selects ActionIDs (Go version, GOOS/GOARCH and
//! arch levels, GOFLAGS, cgo, experiments) and the flags that do the same on the command line
//! (its flavour: `-race`, `-tags`, `-gcflags`, ...). The exact list's key adds the go command
//! line's shape (flag names and package arguments) and the directory in the module, so `go
//! build ./...` and `go build ./cmd/small` in one CI job do not each preload what both used. A
//! session walks its exact list, or the shared one when this command line has not run before.
//!
//! A list is stored as an ordinary Go action entry in the session's own namespace,
//! under the session key as ActionID: the go command never asks for that ID (its IDs are
//! SHA-256 of other inputs), a token that may write the namespace's entries may write its
//! lists, and no server change is needed. The entry's body is the list; its OutputID is the
//! list's SHA-256, which cached checks when the entry is put; readers check the digest, like
//! every other body.
//!
//! The key only chooses which list to fetch; a wrong or stale list costs bandwidth, never
//! correctness, because every preloaded body is verified against its entry.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
/// `go env`, the empty ones left out) that change which ActionIDs it computes.
pub const KEY_ENV: [&str; 16] = [
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
    /// The go command line's flavour flags with their values ([`FLAVOUR_FLAGS`]), sorted.
    pub flavour: Vec<String>,
    /// The go command line's shape ([`CommandLine::shape`]) and the working directory within the
    /// module; unknown when the go command line cannot be read.
    pub command: Option<Vec<String>>,
}

/// The keys of the two lists a session reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    /// This go command line, in this directory of the module, when it can be told.
    pub exact: Option<ActionId>,
    /// Every go command with this subcommand in the module.
    pub shared: ActionId,
}

/// Flags that take a value beyond `go build`'s ([`cached_gobuild::flags::VALUE_FLAGS`]): those
/// of `go list` and of test binaries, which `go test` passes on. Known, so that `-run TestX`
/// is not read as a package `TestX`.
const OTHER_VALUE_FLAGS: &[&str] = &[
    "f",
    "reuse",
    "run",
    "skip",
    "bench",
    "benchtime",
    "count",
    "cpu",
    "parallel",
    "timeout",
    "list",
    "shuffle",
    "fuzz",
    "fuzztime",
    "fuzzminimizetime",
    "outputdir",
    "coverprofile",
    "cpuprofile",
    "memprofile",
    "blockprofile",
    "mutexprofile",
    "trace",
    "vet",
];

/// Flags that change the ActionIDs of (nearly) every package a go command builds: instrumented
/// (`-race`, `-msan`, `-asan`, coverage), compiled differently (`-gcflags`, `-asmflags`,
/// `-trimpath`, `-buildmode`, `-pgo`, `-toolexec`, ...) or from other files (`-tags`, `-mod`,
/// `-modfile`, `-overlay`). A list that a build of another flavour wrote holds almost nothing
/// this command asks for, so both keys carry them with their values. `-ldflags` is not one: it
/// changes only the link, and its value is often stamped per commit.
const FLAVOUR_FLAGS: &[&str] = &[
    "race",
    "msan",
    "asan",
    "cover",
    "covermode",
    "coverpkg",
    "trimpath",
    "gcflags",
    "asmflags",
    "buildmode",
    "pgo",
    "toolexec",
    "compiler",
    "gccgoflags",
    "linkshared",
    "installsuffix",
    "tags",
    "mod",
    "modfile",
    "overlay",
];

fn takes_value(flag: &str) -> bool {
    cached_gobuild::flags::VALUE_FLAGS.contains(&flag) || OTHER_VALUE_FLAGS.contains(&flag)
}

impl KeyInputs {
    /// What this process sees: its environment (the go command's), its working directory (the
    /// go command's) and, on Linux, the go command's command line.
    pub fn from_process(namespace: &str) -> Self {
        let env = KEY_ENV.iter().filter_map(|name| Some(((*name).to_owned(), std::env::var(name).ok()?)));
        let dir = std::env::current_dir().ok();
        let module = dir.as_deref().and_then(module_root);
        Self::for_command(namespace, parent_command_line().as_deref(), dir.as_deref(), module, env)
    }

    /// The inputs of a go command line run in `dir`, in the module rooted at `module` (its
    /// directory and path), with the `go env` values `env` (any of [`KEY_ENV`]; empty values
    /// count as unset, as the go command leaves them out of its cache program's environment).
    /// What a warm computes for the go command it prepares for.
    pub fn for_command(
        namespace: &str,
        go_command: Option<&[String]>,
        dir: Option<&Path>,
        root: Option<(std::path::PathBuf, String)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let env = env
            .into_iter()
            .filter(|(name, value)| !value.is_empty() && KEY_ENV.contains(&name.as_str()))
            .collect::<BTreeMap<_, _>>();
        // In KEY_ENV's order, as the bridge has always hashed them.
        let env = KEY_ENV
            .iter()
            .filter_map(|name| env.get(*name).map(|value| ((*name).to_owned(), value.clone())))
            .collect();
        let (flavour, command) = match go_command.and_then(read_command_line) {
            Some(CommandLine { flavour, mut shape }) => {
                let within = dir.zip(root.as_ref()).and_then(|(dir, (root, _))| dir.strip_prefix(root).ok());
                shape.push(format!("dir={}", within.unwrap_or(Path::new("")).display()));
                (flavour, Some(shape))
            }
            None => (Vec::new(), None),
        };
        Self {
            namespace: namespace.to_owned(),
            subcommand: go_command.and_then(subcommand).unwrap_or_default(),
            module: root.map(|(_, module)| module).unwrap_or_default(),
            env,
            flavour,
            command,
        }
    }

    pub fn keys(&self) -> Keys {
        Keys { exact: self.command.as_deref().map(|command| self.key(Some(command))), shared: self.key(None) }
    }

    fn key(&self, command: Option<&[String]>) -> ActionId {
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
        // Absent when plain, so a plain command's keys are what they were before flavours.
        for flag in &self.flavour {
            field("flavour", flag);
        }
        for part in command.unwrap_or_default() {
            field("command", part);
        }
        ActionId(hash.finalize().into())
    }
}

/// The directory of the go.mod at or above `dir`, and the module path it declares.
pub fn module_root(dir: &Path) -> Option<(std::path::PathBuf, String)> {
    dir.ancestors().find_map(|dir| {
        let text = std::fs::read_to_string(dir.join("go.mod")).ok()?;
        Some((dir.to_owned(), parse_module(&text).unwrap_or_default()))
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

/// The command line of the go command that started us.
fn parent_command_line() -> Option<Vec<String>> {
    #[cfg(target_os = "linux")]
    {
        let ppid = std::os::unix::process::parent_id();
        let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline")).ok()?;
        let mut args: Vec<String> =
            cmdline.split(|&b| b == 0).map(|arg| String::from_utf8_lossy(arg).into_owned()).collect();
        args.pop_if(|last| last.is_empty());
        Some(args)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// `go [-C dir] <subcommand> <rest>...`: the subcommand's position, if `args` is a go command
/// line.
fn subcommand_at(args: &[String]) -> Option<usize> {
    let program = Path::new(args.first()?).file_name()?.to_str()?;
    if !program.starts_with("go") {
        return None;
    }
    let mut at = 1;
    while let Some(arg) = args.get(at) {
        if !arg.starts_with('-') {
            return Some(at);
        }
        at += if arg == "-C" || arg == "--C" { 2 } else { 1 };
    }
    None
}

fn subcommand(args: &[String]) -> Option<String> {
    subcommand_at(args).map(|at| args[at].clone())
}

/// A go command line as the session keys read it.
#[derive(Debug, PartialEq, Eq)]
struct CommandLine {
    /// Its flavour flags ([`FLAVOUR_FLAGS`]) as `-name=value`, sorted; a boolean one set to
    /// false is left out, as if absent.
    flavour: Vec<String>,
    /// What after the subcommand chooses what it builds: the names of its flags, not their
    /// values (`-ldflags` often stamps a version that changes with every commit), and its
    /// package arguments, up to `-args` or, for `go run`, the program's own arguments.
    shape: Vec<String>,
}

fn read_command_line(args: &[String]) -> Option<CommandLine> {
    let at = subcommand_at(args)?;
    let (mut flags, mut flavour, mut packages) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
    let mut rest = args[at + 1..].iter();
    while let Some(arg) = rest.next() {
        if matches!(arg.as_str(), "-args" | "--args" | "--") {
            break;
        }
        let Some(flag) = arg.strip_prefix('-') else {
            packages.push(arg.clone());
            if args[at] == "run" {
                break;
            }
            continue;
        };
        let flag = flag.strip_prefix('-').unwrap_or(flag);
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None if takes_value(flag) => (flag, rest.next().map(String::as_str)),
            None => (flag, None),
        };
        flags.insert(format!("-{name}"));
        // `go test -coverprofile` turns coverage on.
        let (name, value) = if name == "coverprofile" { ("cover", None) } else { (name, value) };
        if FLAVOUR_FLAGS.contains(&name) && value != Some("false") {
            flavour.insert(format!("-{name}={}", value.unwrap_or("true")));
        }
    }
    let shape = flags.into_iter().chain(packages).collect();
    Some(CommandLine { flavour: flavour.into_iter().collect(), shape })
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
            flavour: strings(&["-tags=a"]),
            command: Some(strings(&["-o", "./...", "dir="])),
        };
        let mut keys = vec![base.keys()];
        let mut vary = |change: &dyn Fn(&mut KeyInputs)| {
            let mut inputs = base.clone();
            change(&mut inputs);
            keys.push(inputs.keys());
        };
        vary(&|k| k.namespace = "ci2".into());
        vary(&|k| k.subcommand = "vet".into());
        vary(&|k| k.module = "example.com/other".into());
        vary(&|k| k.env[0].1 = "darwin".into());
        vary(&|k| k.env[1].1 = "go1.26.2".into());
        vary(&|k| k.flavour = strings(&["-race=true", "-tags=a"]));
        vary(&|k| k.flavour = strings(&["-tags=b"]));
        vary(&|k| k.flavour.clear());
        // Length-prefixed fields: moving bytes between fields changes the key.
        vary(&|k| {
            k.namespace = "cib".into();
            k.subcommand = "uild".into();
        });
        let shared: HashSet<_> = keys.iter().map(|keys| keys.shared).collect();
        assert_eq!(shared.len(), keys.len());
        let exact: HashSet<_> = keys.iter().map(|keys| keys.exact.unwrap()).collect();
        assert_eq!(exact.len(), keys.len());
        assert!(shared.is_disjoint(&exact));
        assert_eq!(base.keys(), base.clone().keys());
    }

    #[test]
    fn other_command_lines_share_only_the_shared_list() {
        let inputs = |command: &[&str]| KeyInputs {
            namespace: "ci".into(),
            subcommand: "build".into(),
            command: Some(strings(command)),
            ..KeyInputs::default()
        };
        let all = inputs(&["./...", "dir="]).keys();
        let one = inputs(&["./cmd/small", "dir="]).keys();
        let elsewhere = inputs(&["./...", "dir=sub"]).keys();
        assert_eq!(all.shared, one.shared);
        assert_eq!(all.shared, elsewhere.shared);
        assert_ne!(all.exact, one.exact);
        assert_ne!(all.exact, elsewhere.exact);
        let unknown = KeyInputs { command: None, ..inputs(&[]) }.keys();
        assert_eq!((unknown.exact, unknown.shared), (None, all.shared));
    }

    #[test]
    fn the_go_command_line_gives_the_subcommand_and_its_shape() {
        assert_eq!(subcommand(&strings(&["/usr/local/go/bin/go", "build", "./..."])), Some("build".into()));
        assert_eq!(subcommand(&strings(&["go", "-C", "sub", "vet", "./..."])), Some("vet".into()));
        assert_eq!(subcommand(&strings(&["/bin/sh", "-c", "x"])), None);
        assert_eq!(subcommand(&strings(&["go"])), None);
        let shape = |args: &[&str]| read_command_line(&strings(args)).unwrap().shape;
        // Flag names, sorted; values left out, whichever way they are written.
        let stamped = ["go", "build", "-trimpath", "-ldflags", "-X main.v=1", "-o", "bin/app", "./cmd/app"];
        assert_eq!(shape(&stamped), ["-ldflags", "-o", "-trimpath", "./cmd/app"]);
        assert_eq!(
            shape(&["go", "build", "-o=bin/x", "--ldflags=-s", "-trimpath", "./cmd/app"]),
            shape(&stamped)
        );
        // go test takes flags after its packages, and passes what follows -args on.
        let tested = shape(&["go", "test", "./...", "-run", "TestX", "-count=1", "-args", "-update"]);
        assert_eq!(tested, ["-count", "-run", "./..."]);
        // go run: what follows the package is the program's.
        assert_eq!(shape(&["go", "run", "./gen", "-date", "2026-11-27"]), ["./gen"]);
        assert_eq!(shape(&["go", "-C", "sub", "vet"]), Vec::<String>::new());
        assert_eq!(read_command_line(&strings(&["make", "build"])), None);
    }

    #[test]
    fn the_flavour_is_the_flags_that_change_every_action_with_their_values() {
        let flavour = |args: &[&str]| read_command_line(&strings(args)).unwrap().flavour;
        assert_eq!(
            flavour(&["go", "build", "-o", "x", "-ldflags=-X main.v=1", "./..."]),
            Vec::<String>::new()
        );
        assert_eq!(
            flavour(&["go", "test", "-race", "./...", "-tags", "integration", "--gcflags=all=-N -l", "-v"]),
            ["-gcflags=all=-N -l", "-race=true", "-tags=integration"]
        );
        // However a flag is spelt, the same flavour; a boolean set to false is no flavour.
        assert_eq!(
            flavour(&["go", "test", "-race=true", "./..."]),
            flavour(&["go", "test", "./...", "-race"])
        );
        assert_eq!(flavour(&["go", "build", "-trimpath=false", "./..."]), Vec::<String>::new());
        // A coverage profile turns coverage on.
        assert_eq!(flavour(&["go", "test", "-coverprofile", "c.out", "./..."]), ["-cover=true"]);
        // Flags after -args are the test binary's.
        assert_eq!(flavour(&["go", "test", "./...", "-args", "-race"]), Vec::<String>::new());
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
        let root = module_root(&dir.path().join("a/b"));
        assert_eq!(root, Some((dir.path().to_owned(), "example.com/top".into())));
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
