//! Per-task resource limits: a control group for each running task's build, so a hostile job
//! cannot take the machine's memory, fork without end or crowd out the CPU of the other
//! tenants' tasks on the agent.
//!
//! Each build uid in use has a group, `<parent>/runner-agent-builds/uid-<uid>`, made afresh
//! when a task takes the uid and removed when the task's processes are gone (see
//! [`crate::sandbox::BuildUser`]), with a hard memory limit (`--build-memory`), a process limit
//! (`--build-pids`, threads included) and the default CPU weight: sibling groups share the CPU
//! by group, so a job that forks a hundred compilers gets what a task with two gets. Every
//! process of the build is in it: the go command starts through `enter-build`, which has the
//! agent place it in the group before it runs anything (see [`join`]); the compilers and the
//! GOCACHEPROG bridge the go command starts are its children, and a child starts in its
//! parent's group. The bridge is the agent's code, but it runs as the build user for the build:
//! a build that hits its limit may take it down with it, and the task fails either way.
//!
//! cgroup v2 (one unified hierarchy): `<parent>` is the agent's own group. A group whose
//! children have controllers holds no process itself, so the agent first moves into a leaf,
//! `<parent>/runner-agent` (with whatever else shared its group: they keep every limit they
//! had), then enables the controllers for `runner-agent-builds/`. Under systemd the unit needs
//! `Delegate=yes`, so the agent may manage its own subtree. cgroup v1 (a hierarchy per
//! controller): `<parent>` is the agent's group in each of the memory, pids and cpu
//! hierarchies, and nothing has to move.
//!
//! Group names are per uid, and the uids are the agent's alone (it holds a lock on each), so
//! several agents under one parent never touch each other's groups, and an agent's start
//! removes only what a previous agent left for its own uids.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The directory of the task groups, under the agent's own group.
pub const BUILDS: &str = "runner-agent-builds";
/// The agent's own leaf on cgroup v2.
pub const LEAF: &str = "runner-agent";
/// `--build-pids` when not given: threads count too, and a go build on many cores runs a
/// compiler per core, each with a few dozen threads.
pub const DEFAULT_PIDS: u64 = 4096;

/// How long `enter-build` waits to be placed in its group.
const PLACE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a group that still shows exited processes may take to be removable.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(3);
/// v1: a task whose high-water mark came within a 64th of its memory limit met it.
const LIMIT_SLACK: u64 = 64;
/// What the agent answers a process it placed.
const PLACED: &str = "placed";

/// Placements answered at once: any build process may connect, so a build that connects in a
/// loop must not pile up tasks and blocking threads in the agent; the rest wait in the
/// listener's backlog.
const MAX_PLACING: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
}

const WANTED: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Pids => "pids",
            Self::Cpu => "cpu",
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// `--build-memory`: `None` not given (a share of the machine).
    pub memory: Option<BuildMemory>,
    /// `--build-pids`, if given.
    pub pids: Option<u64>,
    pub concurrency: u32,
}

impl Request {
    /// The flag of a limit the operator asked for, if any.
    pub fn explicit_flag(&self) -> Option<&'static str> {
        if self.explicit(Controller::Memory) {
            Some("--build-memory")
        } else if self.explicit(Controller::Pids) {
            Some("--build-pids")
        } else {
            None
        }
    }

    fn explicit(&self, controller: Controller) -> bool {
        match controller {
            Controller::Memory => matches!(self.memory, Some(BuildMemory::Bytes(_))),
            Controller::Pids => self.pids.is_some(),
            Controller::Cpu => false,
        }
    }
}

/// `--build-memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildMemory {
    Bytes(u64),
    /// `none`: no memory limit.
    Unlimited,
}

/// `--build-memory`: a size, or `none`.
pub fn parse_memory(text: &str) -> Result<BuildMemory, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(BuildMemory::Unlimited);
    }
    let bytes = cached_client::size::parse(text)?;
    if bytes < 16 << 20 {
        return Err(format!("{text:?}: a build needs more than 16 MiB; say `none` for no limit"));
    }
    Ok(BuildMemory::Bytes(bytes))
}

// ---- What /proc says ----

/// A line of `/proc/<pid>/cgroup`: `ID:CONTROLLERS:PATH` (v2: `0::PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Membership {
    /// The controllers field as written (`memory`, `cpu,cpuacct`, `name=systemd`, empty).
    field: String,
    path: String,
}

impl Membership {
    fn has(&self, name: &str) -> bool {
        self.field.split(',').any(|controller| controller == name)
    }

    fn unified(&self) -> bool {
        self.field.is_empty()
    }
}

fn parse_memberships(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(':')?;
            let (field, path) = rest.split_once(':')?;
            Some(Membership { field: field.to_owned(), path: path.to_owned() })
        })
        .collect()
}

/// A cgroup filesystem in `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// The group of the hierarchy shown at `point` (a container's own, say).
    root: String,
    point: PathBuf,
    unified: bool,
    /// The super options: a v1 hierarchy's controllers among them.
    options: Vec<String>,
    read_only: bool,
}

fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_mount).collect()
}

/// `36 25 0:32 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory`.
fn parse_mount(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split(' ').collect();
    let (root, point, mount_options) = (fields.get(3)?, fields.get(4)?, fields.get(5)?);
    let mut after = after.split(' ');
    let fstype = after.next()?;
    let options: Vec<String> = after.nth(1).unwrap_or_default().split(',').map(str::to_owned).collect();
    let unified = match fstype {
        "cgroup2" => true,
        "cgroup" => false,
        _ => return None,
    };
    let read_only =
        mount_options.split(',').any(|option| option == "ro") || options.iter().any(|o| o == "ro");
    Some(Mount { root: unescape(root), point: PathBuf::from(unescape(point)), unified, options, read_only })
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                out.push(digits.iter().fold(0u8, |value, digit| value.wrapping_mul(8) + (digit - b'0')));
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of the group at `path` (as /proc shows it) in the hierarchy mounted at `mount`;
/// `None` when the mount does not show it (it shows another part of the hierarchy).
fn group_dir(mount: &Mount, path: &str) -> Option<PathBuf> {
    let relative = if mount.root == "/" {
        path.strip_prefix('/')?
    } else {
        let rest = path.strip_prefix(mount.root.as_str())?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        rest.trim_start_matches('/')
    };
    Some(if relative.is_empty() { mount.point.clone() } else { mount.point.join(relative) })
}

/// One hierarchy the agent's group is in: where, and for which of the wanted controllers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    /// As /proc/<pid>/cgroup names the hierarchy.
    field: String,
    /// The agent's group: its directory and its path as /proc shows it.
    dir: PathBuf,
    path: String,
    read_only: bool,
    controllers: Vec<Controller>,
}

/// Where the agent stands: the v1 hierarchies of the wanted controllers, or the v2 one; and
/// which controllers no hierarchy has, with why.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    unified: bool,
    hierarchies: Vec<Hierarchy>,
    missing: Vec<(Controller, String)>,
}

fn find(proc_cgroup: &str, mountinfo: &str) -> Found {
    let (memberships, mounts) = (parse_memberships(proc_cgroup), parse_mounts(mountinfo));
    let v1 = find_v1(&memberships, &mounts);
    if !v1.hierarchies.is_empty() {
        return v1;
    }
    let found = memberships.iter().filter(|m| m.unified()).find_map(|membership| {
        mounts.iter().filter(|mount| mount.unified).find_map(|mount| {
            let dir = group_dir(mount, &membership.path)?;
            Some(Hierarchy {
                field: String::new(),
                dir,
                path: membership.path.clone(),
                read_only: mount.read_only,
                controllers: WANTED.to_vec(),
            })
        })
    });
    match found {
        Some(hierarchy) => Found { unified: true, hierarchies: vec![hierarchy], missing: Vec::new() },
        None => v1,
    }
}

/// A controller bound to a v1 hierarchy is in no other, v2 included: where one of the wanted
/// is, the agent uses v1.
fn find_v1(memberships: &[Membership], mounts: &[Mount]) -> Found {
    let mut found = Found { unified: false, hierarchies: Vec::new(), missing: Vec::new() };
    for controller in WANTED {
        let name = controller.name();
        let Some(membership) = memberships.iter().find(|m| !m.unified() && m.has(name)) else {
            found.missing.push((controller, "no cgroup v1 or v2 hierarchy of this process has it".into()));
            continue;
        };
        if let Some(known) = found.hierarchies.iter_mut().find(|h| h.field == membership.field) {
            known.controllers.push(controller);
            continue;
        }
        let mounted = mounts
            .iter()
            .filter(|mount| !mount.unified && mount.options.iter().any(|option| option == name))
            .find_map(|mount| Some((group_dir(mount, &membership.path)?, mount.read_only)));
        match mounted {
            Some((dir, read_only)) => found.hierarchies.push(Hierarchy {
                field: membership.field.clone(),
                dir,
                path: membership.path.clone(),
                read_only,
                controllers: vec![controller],
            }),
            None => found.missing.push((
                controller,
                format!(
                    "its hierarchy ({}) is not mounted where this process sees its group",
                    membership.field
                ),
            )),
        }
    }
    found
}

// ---- The agent's set-up ----

/// The parent of the task groups in one hierarchy.
#[derive(Debug, Clone)]
struct Parent {
    field: String,
    dir: PathBuf,
    /// As /proc/<pid>/cgroup shows it.
    path: String,
    controllers: Vec<Controller>,
}

/// The groups of this agent's tasks.
#[derive(Debug)]
pub struct Cgroups {
    unified: bool,
    parents: Vec<Parent>,
    /// Bytes, where the memory controller is in use and a limit set.
    memory: Option<u64>,
    pids: Option<u64>,
    uids: (u32, u32),
    /// Where `enter-build` asks to be placed.
    socket: PathBuf,
    /// Failed placements logged, per build uid: any local process may connect.
    warnings: crate::quiet::Quiet,
}

/// What [`Cgroups::set_up`] made of the request: the groups, if any, and what could not be
/// limited, with why (for the warning).
pub struct SetUp {
    pub cgroups: Option<Arc<Cgroups>>,
    pub missing: Vec<String>,
}

impl Cgroups {
    /// Detects the hierarchies, makes the agent's parent groups with the controllers, clears
    /// what a previous agent left for `uids`, and serves placements on `socket`. Fails only
    /// where the request named a limit (`--build-memory`, `--build-pids`) whose controller
    /// cannot be had; anything else missing is in [`SetUp::missing`].
    pub fn set_up(request: &Request, uids: (u32, u32), socket: &Path) -> Result<SetUp, String> {
        let read = |path: &str| std::fs::read_to_string(path).map_err(|err| format!("{path}: {err}"));
        let found = find(&read("/proc/self/cgroup")?, &read("/proc/self/mountinfo")?);
        let (parents, missing) = make_parents(found);
        refuse_missing(request, &missing)?;
        let have = |c: Controller| parents.iter().any(|p| p.controllers.contains(&c));
        let mut notes: Vec<String> =
            missing.into_iter().map(|(controller, why)| format!("{} ({why})", controller.name())).collect();
        if parents.is_empty() {
            return Ok(SetUp { cgroups: None, missing: notes });
        }
        let memory = if have(Controller::Memory) { memory_limit(request, &parents)? } else { None };
        if have(Controller::Memory) && memory.is_none() {
            notes.push("memory (--build-memory none)".into());
        }
        let pids = have(Controller::Pids).then_some(request.pids.unwrap_or(DEFAULT_PIDS));
        let cgroups = Self {
            unified: parents.first().is_some_and(|p| p.field.is_empty()),
            parents,
            memory,
            pids,
            uids,
            socket: socket.to_owned(),
            warnings: crate::quiet::Quiet::default(),
        };
        cgroups.remove_stale()?;
        let cgroups = Arc::new(cgroups);
        serve(Arc::clone(&cgroups))?;
        Ok(SetUp { cgroups: Some(cgroups), missing: notes })
    }

    /// What the limits are, for the log.
    pub fn describe(&self) -> String {
        let memory = self.memory.map_or("no memory limit".to_owned(), |bytes| {
            format!("memory {}", cached_client::size::human(bytes))
        });
        let pids = self.pids.map_or("no process limit".to_owned(), |pids| format!("{pids} processes"));
        let cpu = if self.has(Controller::Cpu) { "an equal CPU weight" } else { "no CPU weight" };
        let version = if self.unified { "v2" } else { "v1" };
        format!("{memory}, {pids}, {cpu} (cgroup {version})")
    }

    fn has(&self, controller: Controller) -> bool {
        self.parents.iter().any(|parent| parent.controllers.contains(&controller))
    }

    fn task_dir(parent: &Parent, uid: u32) -> PathBuf {
        parent.dir.join(format!("uid-{uid}"))
    }

    /// Removes the groups of this agent's uids a previous agent left (their processes were
    /// killed when the uids were taken).
    fn remove_stale(&self) -> Result<(), String> {
        for parent in &self.parents {
            for uid in self.uids.0..=self.uids.1 {
                let dir = Self::task_dir(parent, uid);
                if dir.exists() {
                    tracing::info!(group = %dir.display(), "removing a previous agent's task group");
                    remove_group(&dir)?;
                }
            }
        }
        Ok(())
    }

    /// A fresh group for the task of `uid`, with the limits set.
    pub fn create(&self, uid: u32) -> Result<TaskGroup, String> {
        let mut group = TaskGroup { dirs: Vec::new(), placement: self.placement(uid), memory: None };
        for parent in &self.parents {
            let dir = Self::task_dir(parent, uid);
            if dir.exists() {
                remove_group(&dir)?;
            }
            std::fs::create_dir(&dir).map_err(|err| format!("creating {}: {err}", dir.display()))?;
            group.dirs.push(dir.clone());
            self.limit(parent, &dir)?;
            if let (Some(limit), true) = (self.memory, parent.controllers.contains(&Controller::Memory)) {
                group.memory = Some(Memory { dir, unified: self.unified, limit });
            }
        }
        Ok(group)
    }

    fn limit(&self, parent: &Parent, dir: &Path) -> Result<(), String> {
        for controller in &parent.controllers {
            match (controller, self.unified) {
                (Controller::Memory, true) => {
                    if let Some(limit) = self.memory {
                        write(dir, "memory.max", &limit.to_string())?;
                        // A limit the build could pass by swapping would be none.
                        write_if_present(dir, "memory.swap.max", "0")?;
                    }
                }
                (Controller::Memory, false) => {
                    if let Some(limit) = self.memory {
                        write(dir, "memory.limit_in_bytes", &limit.to_string())?;
                        write_if_present(dir, "memory.memsw.limit_in_bytes", &limit.to_string())?;
                    }
                }
                (Controller::Pids, _) => {
                    if let Some(pids) = self.pids {
                        write(dir, "pids.max", &pids.to_string())?;
                    }
                }
                // The default weight, said outright: every task weighs the same.
                (Controller::Cpu, true) => write(dir, "cpu.weight", "100")?,
                (Controller::Cpu, false) => write(dir, "cpu.shares", "1024")?,
            }
        }
        Ok(())
    }

    fn placement(&self, uid: u32) -> Placement {
        let expected = self
            .parents
            .iter()
            .map(|parent| format!("{}:{}/uid-{uid}", parent.field, parent.path.trim_end_matches('/')))
            .collect();
        Placement { socket: self.socket.clone(), expected }
    }

    /// Moves `pid`, a process of `uid`, into the group of `uid`'s task.
    /// Logs a placement that failed: at most once per build uid every few seconds, and only at
    /// debug level for other processes (any local process may connect to the socket).
    fn warn_unplaced(&self, uid: Option<u32>, err: &str) {
        let Some(uid) = uid.filter(|uid| (self.uids.0..=self.uids.1).contains(uid)) else {
            tracing::debug!(?uid, error = %err, "a process outside the build uids asked to be placed");
            return;
        };
        if let Some(unsaid) = self.warnings.admit(uid) {
            tracing::warn!(uid, error = %err, unsaid, "a build process could not be placed in its task's group");
        }
    }

    fn place(&self, pid: u32, uid: u32) -> Result<(), String> {
        if !(self.uids.0..=self.uids.1).contains(&uid) {
            return Err(format!("uid {uid} is not one of this agent's build uids"));
        }
        // The kernel named the process that connected; it may have exited since and its pid
        // gone to another's process (a build that keeps the agent busy with placements and
        // cycles pids), which must never be moved into this task's group (its memory limit
        // would be the other process's out-of-memory kill). Checked just before the move: a
        // pid is not handed out again until the kernel's counter wraps.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|err| format!("process {pid} is gone ({err}): nothing to place"))?;
        if !runs_only_as(&status, uid) {
            return Err(format!("process {pid} no longer runs as uid {uid}: not placed"));
        }
        for parent in &self.parents {
            let dir = Self::task_dir(parent, uid);
            write(&dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }
}

/// Refuses to go on without a limit the operator asked for.
fn refuse_missing(request: &Request, missing: &[(Controller, String)]) -> Result<(), String> {
    let Some((controller, why)) = missing.iter().find(|(controller, _)| request.explicit(*controller)) else {
        return Ok(());
    };
    let flag = if *controller == Controller::Memory { "--build-memory" } else { "--build-pids" };
    Err(format!(
        "{flag} asks for a per-task limit, but the {} cgroup controller cannot be used: {why}. The agent needs root \
         and a writable cgroup filesystem (under systemd: Delegate= on the unit, without ProtectControlGroups=)",
        controller.name()
    ))
}

/// Each hierarchy's parent of the task groups, made with the controllers it can have; and the
/// controllers that cannot be used, with why.
fn make_parents(found: Found) -> (Vec<Parent>, Vec<(Controller, String)>) {
    let mut missing = found.missing;
    let mut parents = Vec::new();
    for hierarchy in found.hierarchies {
        let made = if hierarchy.read_only {
            Err(format!("{} is mounted read-only", hierarchy.dir.display()))
        } else if found.unified {
            make_v2_parent(&hierarchy)
        } else {
            make_v1_parent(&hierarchy).map(|parent| (parent, Vec::new()))
        };
        match made {
            Ok((parent, unavailable)) => {
                missing.extend(unavailable);
                if !parent.controllers.is_empty() {
                    parents.push(parent);
                }
            }
            Err(why) => missing.extend(hierarchy.controllers.iter().map(|c| (*c, why.clone()))),
        }
    }
    (parents, missing)
}

fn make_v1_parent(hierarchy: &Hierarchy) -> Result<Parent, String> {
    let dir = hierarchy.dir.join(BUILDS);
    make_dir(&dir)?;
    Ok(Parent {
        field: hierarchy.field.clone(),
        path: join_path(&hierarchy.path, BUILDS),
        dir,
        controllers: hierarchy.controllers.clone(),
    })
}

/// The v2 parent: the agent moves into its leaf, then the controllers are enabled for the
/// task groups. An agent started from a previous one's leaf (a shell that ran it) works from
/// that one's group.
fn make_v2_parent(hierarchy: &Hierarchy) -> Result<(Parent, Vec<(Controller, String)>), String> {
    let in_leaf = hierarchy.dir.file_name().is_some_and(|name| name == LEAF)
        && hierarchy.dir.parent().is_some_and(|parent| parent.join(BUILDS).is_dir());
    let (base, base_path) = if in_leaf {
        let path = hierarchy.path.rsplit_once('/').map_or("/", |(parent, _)| parent);
        let parent = hierarchy.dir.parent().map(Path::to_owned).unwrap_or_default();
        (parent, if path.is_empty() { "/".to_owned() } else { path.to_owned() })
    } else {
        (hierarchy.dir.clone(), hierarchy.path.clone())
    };
    let (leaf, builds) = (base.join(LEAF), base.join(BUILDS));
    make_dir(&leaf)?;
    make_dir(&builds)?;
    write(&leaf, "cgroup.procs", &std::process::id().to_string())?;
    let mut enabled = Vec::new();
    let mut unavailable = Vec::new();
    for controller in &hierarchy.controllers {
        match enable(&base, &leaf, *controller).and_then(|()| enable(&builds, &leaf, *controller)) {
            Ok(()) => enabled.push(*controller),
            Err(why) => unavailable.push((*controller, why)),
        }
    }
    let parent = Parent {
        field: String::new(),
        dir: builds,
        path: join_path(&base_path, BUILDS),
        controllers: enabled,
    };
    Ok((parent, unavailable))
}

/// Enables `controller` for the children of `dir`. A group with processes of its own can have
/// none for its children: what else is in it (processes that shared the agent's group) moves
/// to the agent's leaf first.
fn enable(dir: &Path, leaf: &Path, controller: Controller) -> Result<(), String> {
    let name = controller.name();
    let available = read(dir, "cgroup.controllers")?;
    if !available.split_whitespace().any(|c| c == name) {
        return Err(format!(
            "{} does not offer it (its parent has not enabled it for its children: delegate it, e.g. \
             Delegate= on the systemd unit)",
            dir.display()
        ));
    }
    let on = format!("+{name}");
    let control = dir.join("cgroup.subtree_control");
    // What else shares the group may start processes meanwhile: a few rounds.
    for _ in 0..5 {
        match std::fs::write(&control, &on) {
            Err(err) if err.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                for pid in read(dir, "cgroup.procs")?.split_whitespace() {
                    // One that exited meanwhile is gone from the group too.
                    let _ = std::fs::write(leaf.join("cgroup.procs"), pid);
                }
            }
            done => return done.map_err(|err| format!("writing {on} to {}: {err}", control.display())),
        }
    }
    Err(format!(
        "{} keeps processes of its own, so its children can have no {name} controller",
        dir.display()
    ))
}

/// The memory limit of each task: the one asked for, or the machine's memory shared between
/// `--concurrency` tasks. Not the agent's own group's limit (a container's): running out of
/// that is the agent's trouble, as running out of the machine's, and the task goes to an
/// agent with room, as it did before tasks had limits; only the operator's own
/// `--build-memory` makes a smaller allowance the job's to respect.
fn memory_limit(request: &Request, parents: &[Parent]) -> Result<Option<u64>, String> {
    let concurrency = u64::from(request.concurrency.max(1));
    let limit = match request.memory {
        Some(BuildMemory::Bytes(bytes)) => bytes,
        Some(BuildMemory::Unlimited) => return Ok(None),
        None => {
            let machine = read("/proc".as_ref(), "meminfo").ok().and_then(|text| mem_total(&text));
            machine.ok_or("cannot read the machine's memory from /proc/meminfo")? / concurrency
        }
    };
    let memory = parents.iter().find(|p| p.controllers.contains(&Controller::Memory));
    let unified = memory.is_some_and(|p| p.field.is_empty());
    let agent = memory.and_then(|p| p.dir.parent()).map_or(u64::MAX, |dir| ancestors_limit(dir, unified));
    if agent < limit.saturating_mul(concurrency) {
        tracing::warn!(
            agent_limit = %cached_client::size::human(agent),
            per_task = %cached_client::size::human(limit),
            concurrency,
            "the agent's own control group allows less memory than --concurrency tasks at --build-memory each: \
             a task killed at the agent's limit rather than its own is handed on to another agent"
        );
    }
    Ok(Some(limit))
}

fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|line| line.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// The least memory limit of `dir` and its ancestors (as far as this process sees them).
fn ancestors_limit(dir: &Path, unified: bool) -> u64 {
    let file = if unified { "memory.max" } else { "memory.limit_in_bytes" };
    dir.ancestors()
        .map_while(|dir| std::fs::read_to_string(dir.join(file)).ok())
        .filter_map(|text| text.trim().parse::<u64>().ok())
        .min()
        .unwrap_or(u64::MAX)
}

// ---- A task's group ----

/// The group of one task; [`TaskGroup::remove`] once none of its processes is left.
#[derive(Debug)]
pub struct TaskGroup {
    dirs: Vec<PathBuf>,
    placement: Placement,
    memory: Option<Memory>,
}

impl TaskGroup {
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn memory(&self) -> Option<&Memory> {
        self.memory.as_ref()
    }

    /// Removes the group: call once nothing of the task runs any more.
    pub fn remove(self) -> Result<(), String> {
        self.dirs.iter().try_for_each(|dir| remove_group(dir))
    }
}

/// How a build process joins its task's group: the agent's socket, and the lines its
/// `/proc/self/cgroup` must then show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub socket: PathBuf,
    pub expected: Vec<String>,
}

/// A task group's memory counters.
#[derive(Debug, Clone)]
pub struct Memory {
    dir: PathBuf,
    unified: bool,
    limit: u64,
}

impl Memory {
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether the kernel killed a process of the task because the task's own limit was
    /// reached. A group counts the kills of its processes by any out-of-memory killer, the
    /// machine's or an ancestor group's included, so a kill alone says nothing of whose memory
    /// ran out. v2 counts in `oom` the times this group's own limit left an allocation failing;
    /// v1 only tells whether the usage met the limit (`memory.failcnt`, or the high-water mark
    /// within [`LIMIT_SLACK`] of it: the last charges before a kill may be of a huge page that
    /// did not fit), whether reclaim then made room or not: a kill by another out-of-memory
    /// killer after the task once used its whole allowance is the job's fault too.
    pub fn own_limit_killed(&self) -> bool {
        let events = if self.unified { "memory.events" } else { "memory.oom_control" };
        let text = std::fs::read_to_string(self.dir.join(events)).unwrap_or_default();
        let count = |name: &str| counter(&text, name).unwrap_or(0);
        if count("oom_kill") == 0 {
            return false;
        }
        if self.unified {
            return count("oom") > 0;
        }
        // With swap accounting the memory+swap limit, the same size, may be the one met. Some
        // kernels keep no failcnt for v1; the high-water mark is always kept.
        let read = |file: &str| std::fs::read_to_string(self.dir.join(file)).ok()?.trim().parse::<u64>().ok();
        let hits =
            ["memory.failcnt", "memory.memsw.failcnt"].iter().filter_map(|file| read(file)).sum::<u64>();
        let most = ["memory.max_usage_in_bytes", "memory.memsw.max_usage_in_bytes"]
            .iter()
            .filter_map(|file| read(file))
            .max()
            .unwrap_or(0);
        hits > 0 || most >= self.limit - self.limit / LIMIT_SLACK
    }
}

/// `name N` of a counters file.
fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

// ---- Placing build processes ----

/// Serves placements: a process that connects is moved into the group of its uid's task,
/// which the kernel names (`SO_PEERCRED`), never the process. Only this agent's build uids
/// have groups, and a process of one belongs in that one: a build that connects again gains
/// nothing. The socket is anyone's to connect to; a uid that is not a build's is refused.
fn serve(cgroups: Arc<Cgroups>) -> Result<(), String> {
    let socket = cgroups.socket.clone();
    let failed = |err: std::io::Error| format!("serving build placements at {}: {err}", socket.display());
    let _ = std::fs::remove_file(&socket);
    let (address, _dir) = crate::credential::addressable(&socket).map_err(failed)?;
    let listener = tokio::net::UnixListener::bind(&address).map_err(failed)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).map_err(failed)?;
    let placing = Arc::new(tokio::sync::Semaphore::new(MAX_PLACING));
    cached_client::task::spawn("cgroup-placements", async move {
        loop {
            let Ok(permit) = Arc::clone(&placing).acquire_owned().await else { return };
            match listener.accept().await {
                Ok((stream, _)) => {
                    let cgroups = Arc::clone(&cgroups);
                    cached_client::task::spawn("cgroup-place", async move {
                        answer(cgroups, stream).await;
                        drop(permit);
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept on the build placement socket");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn answer(cgroups: Arc<Cgroups>, mut stream: tokio::net::UnixStream) {
    use tokio::io::AsyncWriteExt;
    let uid = stream.peer_cred().ok().map(|peer| peer.uid());
    let placed = match stream.peer_cred() {
        Ok(peer) => match peer.pid().and_then(|pid| u32::try_from(pid).ok()) {
            Some(pid) => {
                let (uid, placing) = (peer.uid(), Arc::clone(&cgroups));
                // Moving a process between groups waits for the kernel's cgroup locks.
                cached_client::task::spawn_blocking("cgroup-place", move || placing.place(pid, uid))
                    .await
                    .unwrap_or_else(|err| Err(err.to_string()))
            }
            None => Err("the kernel did not say which process connected".into()),
        },
        Err(err) => Err(format!("cannot tell who connected: {err}")),
    };
    let reply = match placed {
        Ok(()) => PLACED.to_owned(),
        Err(err) => {
            cgroups.warn_unplaced(uid, &err);
            err
        }
    };
    let _ = tokio::time::timeout(PLACE_TIMEOUT, async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// The build process's side, in `enter-build` before it runs anything: asks the agent to
/// place it in its task's group and checks that `/proc/self/cgroup` shows the group. Nothing
/// of the build can fork before: this binary's own code runs until it execs the program, so
/// whatever the build starts starts inside the group. (Placing the process itself is not open
/// to it: moving between groups takes write access where only root writes, and the agent
/// cannot act between the spawn and the exec of a process the build library starts.)
pub fn join(placement: &Placement) -> Result<(), String> {
    let failed = |err: std::io::Error| format!("{}: {err}", placement.socket.display());
    let (address, _dir) = crate::credential::addressable(&placement.socket).map_err(failed)?;
    let mut stream = std::os::unix::net::UnixStream::connect(&address).map_err(failed)?;
    stream.set_read_timeout(Some(PLACE_TIMEOUT)).map_err(failed)?;
    let mut reply = String::new();
    (&mut stream).take(4096).read_to_string(&mut reply).map_err(failed)?;
    if reply != PLACED {
        return Err(format!("the agent could not place this process: {reply}"));
    }
    let shown =
        std::fs::read_to_string("/proc/self/cgroup").map_err(|err| format!("/proc/self/cgroup: {err}"))?;
    match missing_membership(&shown, &placement.expected) {
        None => Ok(()),
        Some(line) => Err(format!("placed, but /proc/self/cgroup does not show {line:?}:\n{shown}")),
    }
}

/// Whether a `/proc/<pid>/status` says the process's real, effective, saved and file-system
/// uids are all `uid`.
fn runs_only_as(status: &str, uid: u32) -> bool {
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"));
    uids.is_some_and(|uids| {
        let ids: Vec<&str> = uids.split_whitespace().collect();
        ids.len() == 4 && ids.iter().all(|id| id.parse() == Ok(uid))
    })
}

/// The first of `expected` (`CONTROLLERS:PATH`) that `proc_cgroup` does not show.
fn missing_membership<'a>(proc_cgroup: &str, expected: &'a [String]) -> Option<&'a String> {
    let memberships = parse_memberships(proc_cgroup);
    expected.iter().find(|line| {
        !memberships.iter().any(|m| line.split_once(':') == Some((m.field.as_str(), m.path.as_str())))
    })
}

// ---- Files ----

fn join_path(path: &str, name: &str) -> String {
    format!("{}/{name}", path.trim_end_matches('/'))
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(format!("creating {}: {err}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn read(dir: &Path, file: &str) -> Result<String, String> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|err| format!("{}: {err}", path.display()))
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|err| format!("writing {value} to {}: {err}", path.display()))
}

fn write_if_present(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    if dir.join(file).exists() { write(dir, file, value) } else { Ok(()) }
}

/// Removes an empty group. Processes that were killed may still show in it for a moment (an
/// exiting process leaves its group last), so it retries a while.
fn remove_group(dir: &Path) -> Result<(), String> {
    let deadline = std::time::Instant::now() + REMOVE_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) if std::time::Instant::now() >= deadline => {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                return Err(format!(
                    "cannot remove the task group {}: {err} (processes still in it: {})",
                    dir.display(),
                    procs.split_whitespace().collect::<Vec<_>>().join(" ")
                ));
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

#[cfg(test)]
mod tests;
