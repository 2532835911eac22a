//! Files a build reads that `go list` does not name: headers pulled in by quoted `#include`
//! (from assembly, C-family and Fortran files and cgo preambles), `.incbin`/`.include` data of
//! the assembler, and files named by a package's `#cgo` flags (`${SRCDIR}/lib/libx.a`,
//! `-L${SRCDIR}/lib`, `-I${SRCDIR}/../inc`). Without them a changed header outside the package
//! directory would hit a key recorded with the old one (docs/build-keys.md, `file.`).
//!
//! An include that no local candidate satisfies stays out of the key, like system headers in
//! go's own cache: `<stdio.h>`, `"textflag.h"`, `"go_asm.h"`, `"_cgo_export.h"`, `"stdio.h"`
//! are found by the compiler in the system directories, GOROOT or its work directory.
//!
//! On a runner agent the sources are a tenant's and the scan runs in the agent, not as the
//! build user: it reads and keys nothing outside the build's own modules. A name that leads out
//! of them (an absolute path, `../` past the module, a link whose target is outside) makes the
//! wrapper step aside untouched, and files are opened without following a last link or waiting
//! on a FIFO, then checked to be regular files.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Component as PathPart, Path, PathBuf};

mod text;

use self::text::{GoComments, MAX_DIRECTIVES, Reader};
use crate::confine::{Outside, Within};
use crate::inputs::NoKey;

/// The files of one package that are read for includes.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub dir: PathBuf,
    /// The directory of the module the package is in (its own directory without one): what
    /// the scan may read is inside the roots of the scanned packages.
    pub root: PathBuf,
    /// Assembly, C, C++, Objective-C, Fortran, header and SWIG files, relative to `dir`.
    pub native: Vec<String>,
    /// cgo files: their comments hold the preamble and the `#cgo` directives.
    pub cgo: Vec<String>,
}

/// How far a scan may go. The sources are a tenant's on a runner agent: an include tree, a
/// `-L` directory or a file may be of any size, and a scan runs before every build.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Files read plus files found.
    pub files: usize,
    /// Bytes read.
    pub bytes: u64,
}

pub const LIMITS: Limits = Limits { files: 20_000, bytes: 512 * 1024 * 1024 };

/// What a line asks the compiler or assembler to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Directive {
    /// A quoted `#include`, `#include_next`, `#import`, `.include`, `%include` or Fortran
    /// `include`: a source file, itself read for includes.
    Include(String),
    /// An include in angle brackets: the compiler looks for it in the `-I` directories (go's
    /// for the package directory, and the `#cgo` ones) before the system's.
    System(String),
    /// `.incbin`: data.
    Incbin(String),
    /// An include whose file a macro names: it cannot be resolved without preprocessing.
    Computed(String),
    /// Text compilers may read as a directive or not, depending on their mode.
    Ambiguous(String),
    /// `#cgo [constraints] VERB: flags`, after `#cgo`.
    Cgo(String),
}

/// What the packages' sources read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Included {
    /// Every file read besides the sources themselves, resolved as described in the module
    /// documentation; paths are lexically clean, so one file has one name. Files `go list`
    /// names may be among them: the caller keys each path once.
    pub files: BTreeSet<PathBuf>,
    /// The files a package reads that are not its own in `go list`: go's action ID for the
    /// package, and so the go cache's entry for it, does not change with them.
    pub unseen_by_go: BTreeSet<PathBuf>,
}

/// What `packages` read, opening nothing outside their modules and `tree` (the directory the
/// build's sources came in: a job's tree, a developer's repository), where headers shared
/// by several modules may sit. A `#cgo` flag naming a path in `module_cache` (GOMODCACHE)
/// written out in full gives no key: other builds on the machine write there.
pub fn inputs(
    packages: &[Sources],
    tree: Option<&Path>,
    module_cache: Option<&Path>,
    limits: &Limits,
) -> Result<Included, NoKey> {
    let roots = Roots::of(packages, tree);
    let module_cache = module_cache.map_or_else(Vec::new, |cache| {
        let resolved = std::fs::canonicalize(cache).ok();
        std::iter::once(clean(cache)).chain(resolved).collect()
    });
    let mut scan =
        Scan { limits: *limits, files: 0, bytes: 0, found: Included::default(), roots, module_cache };
    for sources in packages {
        scan.package(sources)?;
    }
    Ok(scan.found)
}

/// Refuses `#cgo` flags of `packages` that name files outside their modules (`-I${SRCDIR}/..`
/// into another module's directory), reading only the cgo files' `#cgo` lines: for packages of
/// modules from the module cache, whose own directories are checked against go.sum instead
/// of scanned ([`crate::modverify`]), and whose includes a scan may not follow (go-sqlite3
/// includes a file a macro names).
/// An absolute path into `gomodcache` outside those modules counts as outside too.
pub fn refuse_flags_outside_modules(
    packages: &[Sources],
    gomodcache: &Path,
    limits: &Limits,
) -> Result<(), NoKey> {
    let roots = Roots::of(packages, None);
    let module_cache = Vec::new();
    let mut scan =
        Scan { limits: *limits, files: 0, bytes: 0, found: Included::default(), roots, module_cache };
    for sources in packages {
        scan.flags(sources, gomodcache).map_err(|err| {
            NoKey(format!(
                "a #cgo line of {}, a module from the module cache: {}",
                sources.dir.display(),
                err.0
            ))
        })?;
    }
    Ok(())
}

/// `path` with `.` and `..` resolved lexically, as go's assembler joins include paths.
pub fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        clean_step(&mut out, part);
    }
    out
}

fn clean_step(out: &mut PathBuf, part: PathPart) {
    match part {
        PathPart::CurDir => {}
        PathPart::ParentDir if matches!(out.components().next_back(), Some(PathPart::Normal(_))) => {
            out.pop();
        }
        PathPart::ParentDir if out.has_root() => {}
        other => out.push(other),
    }
}

/// `path` (absolute) cleaned as `clean` does, where that is the file the C compiler opens: the
/// kernel takes a `..` after a symbolic link to the parent of the link's target, so with `lnk`
/// a link to `a/b`, `lnk/../inc` is `a/inc`, not `inc`. Such a path gives no key, and so does a
/// `..` after a part outside `roots`, which is not looked at: on an agent the scan runs as the
/// agent, and what is there is none of the job's business.
fn clean_as_opened(path: &Path, roots: &Roots) -> Result<PathBuf, NoKey> {
    let mut out = PathBuf::new();
    for part in path.components() {
        if part == PathPart::ParentDir && out.is_absolute() && !roots.0.names(&out) {
            return Err(NoKey(format!(
                "the build's sources name {}, whose `..` goes up from outside its modules and source tree, \
                 which the build key does not follow",
                path.display()
            )));
        }
        if part == PathPart::ParentDir && out.is_absolute() && out.is_symlink() {
            return Err(NoKey(format!(
                "the build reads {}, whose `..` goes up from {}, a symbolic link: the compiler goes up from \
                 where the link leads, which the build key does not follow; name the path without `..` \
                 after a link",
                path.display(),
                out.display()
            )));
        }
        clean_step(&mut out, part);
    }
    Ok(out)
}

struct Scan {
    limits: Limits,
    files: usize,
    bytes: u64,
    found: Included,
    roots: Roots,
    /// GOMODCACHE, as written and resolved, for the scan of a build's own packages.
    module_cache: Vec<PathBuf>,
}

/// The directories a scan may read in: the scanned packages' modules and the source tree, as
/// written and as the file system resolves them.
struct Roots(Within);

impl Roots {
    fn of(packages: &[Sources], tree: Option<&Path>) -> Self {
        let modules = packages.iter().map(|sources| sources.root.as_path());
        Self(Within::new(modules.chain(tree)))
    }

    /// Where `path` (lexically clean) really is, if it exists: refused when it leads outside
    /// the roots, by its name or through links, without opening anything.
    fn resolve(&self, path: &Path) -> Result<Option<PathBuf>, NoKey> {
        self.0.resolve(path).map_err(|outside| match outside {
            Outside::ByName => NoKey(format!(
                "the build's sources name {}, outside its modules and source tree, which the build key \
                 does not read",
                path.display()
            )),
            Outside::ThroughLink => NoKey(format!(
                "{} leads outside the build's modules and source tree through a link, which the build \
                 key does not follow",
                path.display()
            )),
        })
    }
}

/// Compiler flags that change how sources are read (their character set, the old
/// preprocessor's rules) or what an include reads: with modules (`-fmodules` and its kin,
/// clang's and gcc's), `#include "a.h"` imports the module a `module.modulemap` beside it
/// declares, with every header the map names, none of which the scan reads. Under them the
/// scan's reading is not the compiler's.
const READING_FLAGS: &[&str] = &[
    "-finput-charset",
    "-traditional",
    "-fmodule",
    "-fcxx-modules",
    "-fimplicit-module-maps",
    "-fbuiltin-module-map",
    "-fprebuilt-module-path",
    "-fprebuilt-implicit-modules",
];

/// Refuses C compiler flags (a `#cgo` line's, CGO_CFLAGS and the like as go passes them, or
/// what pkg-config prints) that change how the compiler reads sources. Words are read as the
/// text has them and as go unquotes them (`"-fmodules"`, `-fmod\ules` and `-fmodu''les` reach
/// the compiler as `-fmodules`); the pieces of a `-Wp,`-like word count too: `-Wp,-traditional`
/// hands the flag on.
pub fn refuse_reading_flags(flags: &str) -> Result<(), NoKey> {
    let raw = flags.split_whitespace().map(str::to_owned);
    let words: Vec<String> = raw.chain(split_quoted(flags)).collect();
    let mut pieces = words.iter().flat_map(|word| word.split(','));
    match pieces.find(|piece| READING_FLAGS.iter().any(|flag| piece.starts_with(flag))) {
        Some(flag) => Err(NoKey(format!(
            "the C compiler is given {flag}, which changes how it reads sources, and so which files \
             they include, in ways the build key does not follow"
        ))),
        None => Ok(()),
    }
}

/// Opens a file to read without following a last link or waiting on a FIFO, and only if it
/// is a regular file once open.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOFOLLOW).bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

/// One package's include search: its directory and the `-I` directories of its `#cgo` flags.
struct Package {
    dir: PathBuf,
    search: Vec<PathBuf>,
    /// Its files as go lists them.
    own: BTreeSet<PathBuf>,
    /// Files read already, so include cycles end.
    read: BTreeSet<PathBuf>,
    /// Files to read for includes.
    queue: Vec<PathBuf>,
}

/// What is at a path the build may read.
enum Kind {
    Missing,
    Dir,
    File,
}

impl Scan {
    /// Refuses a path the `#cgo` lines of `sources` name outside the roots; reads nothing
    /// else, not what they include nor the files named (the roots are modules checked whole
    /// against go.sum, [`crate::modverify`]), and takes run-time paths (`-rpath`,
    /// `$ORIGIN/../lib`) for what they are.
    fn flags(&mut self, sources: &Sources, gomodcache: &Path) -> Result<(), NoKey> {
        let dir = clean(&sources.dir);
        for name in &sources.cgo {
            for directive in self.directives(&dir.join(name), true)? {
                let Directive::Cgo(text) = directive else { continue };
                let Some((_, flags)) = text.split_once(':') else { continue };
                for value in flag_paths(&split_quoted(flags)) {
                    if let Some(path) = local_path(&dir, value, &self.roots)? {
                        self.roots.resolve(&path)?;
                    }
                    let absolute = Path::new(value.trim_start_matches('='));
                    if absolute.is_absolute() && clean(absolute).starts_with(gomodcache) {
                        self.roots.resolve(&clean(absolute))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn package(&mut self, sources: &Sources) -> Result<(), NoKey> {
        let dir = clean(&sources.dir);
        let own = sources.native.iter().chain(&sources.cgo).map(|name| dir.join(name)).collect();
        let mut package =
            Package { dir: dir.clone(), search: Vec::new(), own, read: BTreeSet::new(), queue: Vec::new() };
        // The `#cgo` flags first: their -I directories are where later includes are searched.
        let mut preamble = Vec::new();
        for name in &sources.cgo {
            let path = dir.join(name);
            package.read.insert(path.clone());
            for directive in self.directives(&path, true)? {
                match directive {
                    Directive::Cgo(text) => self.cgo_flags(&mut package, &text)?,
                    other => preamble.push((path.clone(), other)),
                }
            }
        }
        for (from, directive) in preamble {
            self.follow(&mut package, &from, directive)?;
        }
        if sources.native.iter().any(|name| is_fortran(name)) {
            self.add_fortran_modules(&package)?;
        }
        package.queue.extend(sources.native.iter().map(|name| dir.join(name)).rev());
        while let Some(path) = package.queue.pop() {
            if !package.read.insert(path.clone()) {
                continue;
            }
            for directive in self.directives(&path, false)? {
                self.follow(&mut package, &path, directive)?;
            }
        }
        Ok(())
    }

    /// Keys what `directive` in the file at `from` reads.
    fn follow(&mut self, package: &mut Package, from: &Path, directive: Directive) -> Result<(), NoKey> {
        let file = from;
        let (name, source, from) = match directive {
            Directive::Include(name) => (name, true, Some(from)),
            Directive::System(name) => (name, true, None),
            Directive::Incbin(name) => (name, false, Some(from)),
            Directive::Computed(text) => {
                let from = from.display();
                return Err(NoKey(format!(
                    "{from} includes a file named by a macro ({text}), which the build key cannot follow"
                )));
            }
            Directive::Ambiguous(text) => {
                let from = from.display();
                return Err(NoKey(format!(
                    "{from} has {text}, which the build key cannot read for includes"
                )));
            }
            Directive::Cgo(_) => return Ok(()), // Only cgo files' directives are cgo's.
        };
        if name.contains(char::REPLACEMENT_CHARACTER) {
            return Err(NoKey(format!("{} includes a file whose name is not UTF-8", file.display())));
        }
        if name.contains('\\') {
            // go's assembler reads `#include "inc\x2fmagic.h"` as a Go string: inc/magic.h.
            return Err(NoKey(format!(
                "{} includes {name:?}, a name with a backslash, which go's assembler reads as an escape of a \
                 Go string (\\x2f is /) and a C compiler as it is: the build key follows neither",
                file.display()
            )));
        }
        for candidate in candidates(package, from, &name, &self.roots)? {
            if source {
                self.refuse_precompiled(&candidate)?;
            }
            if let Kind::File = self.kind(&candidate)? {
                self.add(package, &candidate)?;
                if source && !package.read.contains(&candidate) && !package.queue.contains(&candidate) {
                    package.queue.push(candidate);
                }
            }
        }
        Ok(())
    }

    /// gcc reads `x.h.gch` (a file, or a directory of them) in place of `x.h` where it finds
    /// one, and clang `x.h.pch` for `-include x.h`: compiled from any text, it is nothing the
    /// scan can read for what it includes.
    fn refuse_precompiled(&self, header: &Path) -> Result<(), NoKey> {
        for extension in [".gch", ".pch"] {
            let mut name = header.as_os_str().to_owned();
            name.push(extension);
            let precompiled = PathBuf::from(name);
            if !matches!(self.kind(&precompiled)?, Kind::Missing) {
                return Err(NoKey(format!(
                    "{} is a precompiled header, which the compiler reads in place of {}; the build key \
                     does not follow precompiled headers",
                    precompiled.display(),
                    header.display()
                )));
            }
        }
        Ok(())
    }

    /// A file the linker may take must be an object, an archive or a shared library by its
    /// magic number: anything else may be a linker script (text, in any encoding) or a thin
    /// archive, which name files the scan cannot find.
    fn refuse_indirect_linker_input(&mut self, path: &Path) -> Result<(), NoKey> {
        const MAGIC: &[&[u8]] = &[
            b"\x7fELF",
            b"!<arch>\n",
            b"\xfe\xed\xfa\xce",
            b"\xfe\xed\xfa\xcf",
            b"\xce\xfa\xed\xfe",
            b"\xcf\xfa\xed\xfe",
            b"\xca\xfe\xba\xbe",
            b"MZ",
        ];
        let cannot = |err: std::io::Error| NoKey(format!("cannot read {}: {err}", path.display()));
        let real = self.roots.resolve(path)?.ok_or_else(|| cannot(std::io::ErrorKind::NotFound.into()))?;
        let mut head = Vec::with_capacity(8);
        open_regular(&real).and_then(|file| file.take(8).read_to_end(&mut head)).map_err(cannot)?;
        self.bytes += head.len() as u64;
        if head.is_empty() || MAGIC.iter().any(|magic| head.starts_with(magic)) {
            return Ok(());
        }
        let what =
            if head.starts_with(b"!<thin>\n") { "a thin archive" } else { "no object, archive or library" };
        Err(NoKey(format!(
            "{} is {what} (a linker script?), which may name files for the linker that the build key does not \
             follow",
            path.display()
        )))
    }

    /// Records a file `package` reads.
    fn add(&mut self, package: &Package, path: &Path) -> Result<(), NoKey> {
        if !package.own.contains(path) {
            self.found.unseen_by_go.insert(path.to_owned());
        }
        if self.found.files.insert(path.to_owned()) {
            self.count_file(path)?;
        }
        Ok(())
    }

    fn count_file(&mut self, path: &Path) -> Result<(), NoKey> {
        self.files += 1;
        if self.files > self.limits.files {
            return Err(NoKey(format!(
                "the build's sources read more than {} files through includes and #cgo flags (at {})",
                self.limits.files,
                path.display()
            )));
        }
        Ok(())
    }

    /// A directory, a regular file (followed through links), or nothing the build reads. A
    /// FIFO or a device could yield anything on each read, so it gives no key.
    fn kind(&self, path: &Path) -> Result<Kind, NoKey> {
        let Some(real) = self.roots.resolve(path)? else { return Ok(Kind::Missing) };
        match std::fs::symlink_metadata(real) {
            Err(_) => Ok(Kind::Missing),
            Ok(meta) if meta.is_dir() => Ok(Kind::Dir),
            Ok(meta) if meta.is_file() => Ok(Kind::File),
            Ok(_) => Err(NoKey(format!("the build reads {}, which is not a regular file", path.display()))),
        }
    }

    /// Fortran's `use` reads compiled module files (`name.mod`) from the package directory,
    /// which `go list` does not name: every one there is keyed.
    fn add_fortran_modules(&mut self, package: &Package) -> Result<(), NoKey> {
        let dir = &package.dir;
        let entries =
            std::fs::read_dir(dir).map_err(|err| NoKey(format!("cannot list {}: {err}", dir.display())))?;
        for entry in entries {
            let name =
                entry.map_err(|err| NoKey(format!("cannot list {}: {err}", dir.display())))?.file_name();
            let path = dir.join(&name);
            if name.to_string_lossy().to_ascii_lowercase().ends_with(".mod")
                && matches!(self.kind(&path)?, Kind::File)
            {
                self.add(package, &path)?;
            }
        }
        Ok(())
    }

    /// Keys every regular file directly in `dir` (a `-I` or `-L` directory: the compiler or
    /// linker may take any of them). For the linker (`linking`), the libraries `-l` may take
    /// are checked to be no scripts or thin archives.
    fn add_dir(&mut self, package: &Package, dir: &Path, linking: bool) -> Result<(), NoKey> {
        let entries =
            std::fs::read_dir(dir).map_err(|err| NoKey(format!("cannot list {}: {err}", dir.display())))?;
        for entry in entries {
            let path = dir.join(
                entry.map_err(|err| NoKey(format!("cannot list {}: {err}", dir.display())))?.file_name(),
            );
            if let Kind::File = self.kind(&path)? {
                let library = path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("lib"));
                if linking && library {
                    self.refuse_indirect_linker_input(&path)?;
                }
                self.add(package, &path)?;
            }
        }
        Ok(())
    }

    /// The directives in the file at `path`, read as a cgo file's comments when `go` is set.
    fn directives(&mut self, path: &Path, go: bool) -> Result<Vec<Directive>, NoKey> {
        self.count_file(path)?;
        let cannot = |err: std::io::Error| NoKey(format!("cannot read {}: {err}", path.display()));
        let real = self.roots.resolve(path)?.ok_or_else(|| cannot(std::io::ErrorKind::NotFound.into()))?;
        let mut file = open_regular(&real).map_err(cannot)?;
        let mut lines = Reader::new(!go);
        let mut comments = GoComments::default();
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let read = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(cannot(err)),
            };
            self.bytes += read as u64;
            if self.bytes > self.limits.bytes {
                return Err(NoKey(format!(
                    "the build's sources are more than {} to read for includes (at {})",
                    size(self.limits.bytes),
                    path.display()
                )));
            }
            for &byte in &buffer[..read] {
                if go { comments.byte(byte, &mut lines) } else { lines.byte(byte) }
            }
        }
        if go {
            comments.finish(&mut lines);
        }
        let found = lines.finish();
        if found.len() > MAX_DIRECTIVES {
            return Err(NoKey(format!(
                "{} holds more than {MAX_DIRECTIVES} includes, more than the build key follows",
                path.display()
            )));
        }
        Ok(found)
    }

    /// Keys the files a package's `#cgo` flags name through `${SRCDIR}` or a relative path (the
    /// compiler runs in the package directory), and adds its include directories.
    fn cgo_flags(&mut self, package: &mut Package, text: &str) -> Result<(), NoKey> {
        let Some((head, flags)) = text.split_once(':') else { return Ok(()) };
        let verb = head.split_whitespace().last();
        if !matches!(verb, Some("CFLAGS" | "CPPFLAGS" | "CXXFLAGS" | "FFLAGS" | "LDFLAGS")) {
            return Ok(()); // pkg-config names packages, not files.
        }
        let linking = verb == Some("LDFLAGS");
        refuse_reading_flags(flags)?;
        if linking && split_quoted(flags).iter().any(|word| word.starts_with("-l:")) {
            return Err(NoKey(
                "a #cgo LDFLAGS line names a library file with -l:, which the build key does not follow"
                    .into(),
            ));
        }
        let words = split_quoted(flags);
        self.refuse_own_absolute_paths(package, &words)?;
        let mut words = words.iter();
        let mut previous: Option<&String> = None;
        while let Some(word) = words.next() {
            let argument = previous.is_some_and(|flag| NAME_ARGUMENTS.contains(&flag.as_str()));
            if linking && !argument {
                refuse_relative_linker_input(package, word)?;
            }
            previous = Some(word);
            let (value, flag) = match flag_value(word) {
                FlagValue::Next(flag) => (words.next().map_or("", String::as_str), flag),
                FlagValue::Joined(value, flag) => (value, flag),
                FlagValue::List(list) => {
                    let mut pieces = list.split(',');
                    while let Some(piece) = pieces.next() {
                        // `-Wp,-include,f` hands the preprocessor a source file.
                        match flag_value(piece) {
                            FlagValue::Next(Flag::Source) => {
                                let file = pieces.next().unwrap_or("");
                                self.cgo_path(package, file, Flag::Source, linking)?;
                            }
                            FlagValue::Joined(file, Flag::Source) => {
                                self.cgo_path(package, file, Flag::Source, linking)?
                            }
                            _ => self.cgo_path(package, piece, Flag::Other, linking)?,
                        }
                    }
                    continue;
                }
            };
            self.cgo_path(package, value, flag, linking)?;
        }
        Ok(())
    }

    /// Refuses `#cgo` flags that name, written out absolute, a path that may lead into the
    /// build's own tree: with a `..` component, under `/proc` or `/dev/fd` by name or through
    /// links (the compiler runs in the package directory, so `-I/proc/self/cwd/inc` is its
    /// `inc`), or within the scan's modules and source tree by name or resolved. The scan keys
    /// `${SRCDIR}` and relative paths only, and go's action IDs a flag's text: the files there
    /// would be keyed by neither. Every path-like piece counts (`-I=/x` and `-I$SYSROOT/x` too,
    /// sysroot-relative to gcc, the sysroot being `/` or another flag's), as own.rs reads
    /// CGO_CFLAGS and the like; other absolute paths are the machine's, like `/usr/include`.
    fn refuse_own_absolute_paths(&self, package: &Package, words: &[String]) -> Result<(), NoKey> {
        for piece in crate::own::path_like(words) {
            let path = piece.strip_prefix("$SYSROOT").or_else(|| piece.strip_prefix('=')).unwrap_or(piece);
            let path = Path::new(path.trim_matches(['"', '\'']));
            if !path.is_absolute() {
                continue;
            }
            let why = if crate::own::may_lead_anywhere(path) {
                "which may lead into the build's own tree (a `..` part, /proc or /dev/fd)"
            } else if self.roots.0.holds(&clean(path)) {
                "inside the build's modules or source tree"
            } else if self.in_module_cache(path) {
                "inside the module cache (GOMODCACHE), where other builds on this machine may have \
                 edited it; require the module and name the files from a package of it"
            } else {
                continue;
            };
            return Err(NoKey(format!(
                "a #cgo flag of {} names {piece}, {why}: neither the build key nor go's cache reads the files \
                 there (go keys the flag's text); name them with ${{SRCDIR}} or a path relative to the package",
                package.dir.display()
            )));
        }
        Ok(())
    }

    /// Whether `path` is in the module cache, by its name or resolved.
    fn in_module_cache(&self, path: &Path) -> bool {
        let resolved = std::fs::canonicalize(path).ok();
        std::iter::once(clean(path))
            .chain(resolved)
            .any(|path| self.module_cache.iter().any(|cache| path.starts_with(cache)))
    }

    fn cgo_path(
        &mut self,
        package: &mut Package,
        value: &str,
        flag: Flag,
        linking: bool,
    ) -> Result<(), NoKey> {
        let Some(path) = local_path(&package.dir, value, &self.roots)? else { return Ok(()) };
        let kind = self.kind(&path)?;
        if flag == Flag::Searched && !matches!(kind, Kind::Missing) {
            return Err(NoKey(format!(
                "a #cgo flag of {} makes the compiler look for headers or libraries under {} (a sysroot or \
                 prefix), which the build key does not follow",
                package.dir.display(),
                path.display()
            )));
        }
        if flag == Flag::Source {
            self.refuse_precompiled(&path)?;
        }
        match kind {
            Kind::Missing => {}
            Kind::Dir => {
                if flag == Flag::Include {
                    package.search.push(path.clone());
                }
                self.add_dir(package, &path, linking)?;
            }
            Kind::File => {
                if linking {
                    self.refuse_indirect_linker_input(&path)?;
                }
                self.add(package, &path)?;
                if flag == Flag::Source {
                    package.queue.push(path);
                }
            }
        }
        Ok(())
    }
}

/// Flags whose next word is a name or a setting, not a file (`-target x86_64-apple-macos10.12`).
const NAME_ARGUMENTS: &[&str] = &[
    "-target",
    "--target",
    "-arch",
    "-framework",
    "-weak_framework",
    "-undefined",
    "-install_name",
    "-soname",
];

/// Refuses a file a `#cgo LDFLAGS` word names by a relative path (`lib/libfoo.a`, or a piece
/// of a `-Wl,` list: `-Wl,--version-script=exports.map`): go makes relative `-L` and `-I` paths
/// absolute under the package directory but passes these as written, and the linker runs
/// where go runs, so it reads the file there, which neither the key (the scan looks in the
/// package directory) nor go's action IDs (the flag's text) follow. A value with neither `/`
/// nor `.` is no file (`-framework CoreFoundation`), nor is a name the linker records
/// (`-soname`, `-install_name`) or a run-time search path.
fn refuse_relative_linker_input(package: &Package, word: &str) -> Result<(), NoKey> {
    let relative_file = |value: &str| {
        !value.starts_with('-')
            && !value.contains("${SRCDIR}")
            && !Path::new(value).is_absolute()
            && value.contains(['/', '.'])
    };
    let named = match word.strip_prefix("-Wl,") {
        None => relative_file(word).then_some(word),
        Some(list) => {
            let mut pieces = list.split(',');
            let mut found = None;
            while let Some(piece) = pieces.next() {
                if matches!(piece, "-rpath" | "--rpath" | "-R" | "-soname" | "-h" | "-install_name") {
                    pieces.next();
                    continue;
                }
                let value =
                    piece.split_once('=').filter(|_| piece.starts_with('-')).map_or(piece, |(_, v)| v);
                if relative_file(value) && !run_time_path(value) {
                    found = Some(value);
                    break;
                }
            }
            found
        }
    };
    match named {
        None => Ok(()),
        Some(path) => Err(NoKey(format!(
            "a #cgo LDFLAGS line of {} names {path}, a path the linker reads relative to where go runs, which \
             the build key does not follow; write it as ${{SRCDIR}}/<path from the package directory>",
            package.dir.display()
        ))),
    }
}

fn is_fortran(name: &str) -> bool {
    let extension = name.rsplit_once('.').map_or("", |(_, extension)| extension).to_ascii_lowercase();
    matches!(extension.as_str(), "f" | "for" | "ftn" | "f90" | "f95" | "f03" | "f08")
}

fn size(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) { format!("{} MiB", bytes >> 20) } else { format!("{bytes} bytes") }
}

/// Where an include may be found, in the compiler's order: the including file's directory (not
/// for an angle-bracket include, `from` None), the package directory (go passes it as -I, and the assembler's `.incbin`
/// starts there), then the `#cgo` -I directories. Every one that exists is keyed, not only
/// the first: `.incbin` and `#include_next` search in other orders.
fn candidates(
    package: &Package,
    from: Option<&Path>,
    name: &str,
    roots: &Roots,
) -> Result<Vec<PathBuf>, NoKey> {
    let name = Path::new(name);
    if name.is_absolute() {
        return Ok(vec![clean_as_opened(name, roots)?]);
    }
    let from_dir = from.and_then(Path::parent);
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in
        from_dir.into_iter().chain([package.dir.as_path()]).chain(package.search.iter().map(PathBuf::as_path))
    {
        let candidate = clean_as_opened(&dir.join(name), roots)?;
        if !out.contains(&candidate) {
            out.push(candidate);
        }
    }
    Ok(out)
}

/// What a `#cgo` flag's path is to the build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    /// An include directory.
    Include,
    /// A file read as source (`-include`, `-imacros`).
    Source,
    /// A library directory, a library, an object, anything else.
    Other,
    /// A directory under which the compiler or linker looks by names of its own (a sysroot, a
    /// prefix, frameworks).
    Searched,
}

enum FlagValue<'a> {
    /// The flag's value is the next word.
    Next(Flag),
    /// The value is in the word (`-I../inc`, or the word itself).
    Joined(&'a str, Flag),
    /// Comma-separated values (`-Wl,-rpath,${SRCDIR}/lib`).
    List(&'a str),
}

fn flag_value(word: &str) -> FlagValue<'_> {
    const INCLUDE_DIRS: &[&str] = &["-iquote", "-isystem", "-idirafter", "-I"];
    // gcc takes `--include=f` and a joined `-includef` as well.
    const SOURCES: &[&str] = &["--include=", "--imacros=", "--include", "--imacros", "-include", "-imacros"];
    const SEARCHED: &[&str] =
        &["--sysroot", "-isysroot", "-iprefix", "-iwithprefix", "-imultilib", "-iframework", "-F", "-B"];
    const OTHER: &[&str] = &["-L"];
    let kinds = [
        (INCLUDE_DIRS, Flag::Include),
        (SOURCES, Flag::Source),
        (SEARCHED, Flag::Searched),
        (OTHER, Flag::Other),
    ];
    for (flags, kind) in kinds {
        for flag in flags {
            if word == *flag {
                return FlagValue::Next(kind);
            }
            if let Some(value) = word.strip_prefix(flag).filter(|value| !value.is_empty()) {
                let value = if kind == Flag::Searched { value.trim_start_matches('=') } else { value };
                return FlagValue::Joined(value, kind);
            }
        }
    }
    if let Some(list) = ["-Wl,", "-Wa,", "-Wp,"].iter().find_map(|prefix| word.strip_prefix(prefix)) {
        return FlagValue::List(list);
    }
    FlagValue::Joined(word, Flag::Other)
}

/// The values of `words` (one `#cgo` line's) that may name files: each flag's value and each
/// piece of a `-Wl,`-like list, but not the run-time search paths the loader reads
/// (`-rpath`/`-R` values, `$ORIGIN`, `@loader_path` and kin), which no build reads.
fn flag_paths(words: &[String]) -> Vec<&str> {
    let mut values = Vec::new();
    let mut words = words.iter();
    while let Some(word) = words.next() {
        match flag_value(word) {
            FlagValue::Next(_) => values.extend(words.next().map(String::as_str)),
            FlagValue::Joined(value, _) => values.push(value),
            FlagValue::List(list) => {
                let mut pieces = list.split(',');
                while let Some(piece) = pieces.next() {
                    if matches!(piece, "-rpath" | "-R" | "--rpath") {
                        pieces.next();
                    } else {
                        values.push(piece);
                    }
                }
            }
        }
    }
    values.retain(|value| !run_time_path(value));
    values
}

/// Whether a linker flag value is a path the loader resolves when the program runs.
fn run_time_path(value: &str) -> bool {
    ["$ORIGIN", "${ORIGIN}", "@loader_path", "@executable_path", "@rpath"]
        .iter()
        .any(|token| value.starts_with(token))
}

/// The local file or directory a `#cgo` flag value names: through `${SRCDIR}` (anywhere in
/// it, as in `--sysroot=${SRCDIR}/x`), or as a relative path. Absolute paths written out are
/// the machine's, like the system headers, and other flags are no paths.
fn local_path(dir: &Path, value: &str, roots: &Roots) -> Result<Option<PathBuf>, NoKey> {
    if let Some(at) = value.find("${SRCDIR}") {
        let expanded = value[at..].replace("${SRCDIR}", &dir.to_string_lossy());
        return clean_as_opened(Path::new(&expanded), roots).map(Some);
    }
    let relative = !value.is_empty() && !value.starts_with('-') && !Path::new(value).is_absolute();
    relative.then(|| clean_as_opened(&dir.join(value), roots)).transpose()
}

/// Words as cgo splits a `#cgo` line: at spaces, with '…' and "…" quoting and `\` escapes.
fn split_quoted(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut escaped = false;
    let mut in_word = false;
    for c in text.chars() {
        if escaped {
            word.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
            in_word = true;
        } else if Some(c) == quote {
            quote = None;
        } else if quote.is_none() && (c == '\'' || c == '"') {
            quote = Some(c);
            in_word = true;
        } else if quote.is_none() && c.is_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut word));
                in_word = false;
            }
        } else {
            word.push(c);
            in_word = true;
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::write;

    fn package(root: &Path, dir: &str, native: &[&str], cgo: &[&str]) -> Sources {
        Sources {
            dir: root.join(dir),
            root: root.to_owned(),
            native: native.iter().map(|name| (*name).to_owned()).collect(),
            cgo: cgo.iter().map(|name| (*name).to_owned()).collect(),
        }
    }

    /// The files found, relative to `root`.
    fn found(root: &Path, packages: &[Sources]) -> Vec<String> {
        let found = inputs(packages, None, None, &LIMITS).unwrap();
        found.files.iter().map(|path| crate::inputs::relative(path, root)).collect()
    }

    fn refusal(packages: &[Sources], limits: &Limits) -> String {
        inputs(packages, None, None, limits).unwrap_err().0
    }

    /// A job's sources are read by the agent, not as the build user: nothing outside the
    /// build's modules is opened, named by the path or reached through a link.
    #[test]
    fn names_that_lead_outside_the_modules_give_no_key_and_are_not_read() {
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), &[("secret.h", "#define SECRET 1\n")]);
        let secret = outside.path().join("secret.h");
        let cases = [
            ("an absolute include", format!("#include \"{}\"\n", secret.display()), "outside its modules"),
            ("an absolute .incbin", ".incbin \"/proc/self/status\"\n".to_owned(), "outside its modules"),
            (
                "`../` past the module",
                "#include \"../../../../../../../../etc/hostname\"\n".to_owned(),
                "outside its modules",
            ),
            ("a link out of the module", "#include \"../../inc/secret.h\"\n".to_owned(), "through a link"),
        ];
        for (what, source, said) in cases {
            let root = tempfile::tempdir().unwrap();
            write(root.path(), &[("cmd/app/a.s", &source)]);
            std::os::unix::fs::symlink(outside.path(), root.path().join("inc")).unwrap();
            let refusal = refusal(&[package(root.path(), "cmd/app", &["a.s"], &[])], &LIMITS);
            assert!(refusal.contains(said), "{what}: {refusal}");
        }
        // What is outside is not looked at: a `..` there is refused alike, link or not (on an
        // agent the scan runs as the agent).
        std::os::unix::fs::symlink("/", outside.path().join("lnk")).unwrap();
        std::fs::create_dir(outside.path().join("dir")).unwrap();
        let refusals: Vec<String> = ["lnk", "dir"]
            .iter()
            .map(|part| {
                let root = tempfile::tempdir().unwrap();
                let include = format!("#include \"{}/{part}/../secret.h\"\n", outside.path().display());
                write(root.path(), &[("cmd/app/a.s", &include)]);
                let refusal = refusal(&[package(root.path(), "cmd/app", &["a.s"], &[])], &LIMITS);
                refusal.replace(part, "_")
            })
            .collect();
        assert_eq!(refusals[0], refusals[1]);
        assert!(refusals[0].contains("outside its modules"), "{}", refusals[0]);
        // So does a -L directory named past the module through ${SRCDIR}.
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[(
                "app.go",
                "package app\n\n// #cgo LDFLAGS: -L${SRCDIR}/../../../../../../../proc\nimport \"C\"\n",
            )],
        );
        let refusal = refusal(&[package(root.path(), "", &[], &["app.go"])], &LIMITS);
        assert!(refusal.contains("outside its modules"), "{refusal}");
    }

    /// A repository whose modules share headers above their go.mod files: found within the
    /// source tree, refused beyond it.
    #[test]
    fn headers_above_the_module_are_read_within_the_source_tree() {
        let repo = tempfile::tempdir().unwrap();
        write(
            repo.path(),
            &[
                ("include/val.h", "#include \"../../outside.h\"\n"),
                ("go/cmd/app/a.s", "#include \"../../../include/val.h\"\n"),
                ("go/go.mod", "module example.com/app\n"),
            ],
        );
        let module = repo.path().join("go");
        let sources = [package(&module, "cmd/app", &["a.s"], &[])];
        let refused = inputs(&sources, None, None, &LIMITS).unwrap_err().0;
        assert!(refused.contains("outside its modules and source tree"), "{refused}");
        let refused = inputs(&sources, Some(repo.path()), None, &LIMITS).unwrap_err().0;
        assert!(refused.contains("outside.h"), "past the tree it still stops: {refused}");
        write(repo.path(), &[("include/val.h", "#define VALUE 1\n")]);
        let found = inputs(&sources, Some(repo.path()), None, &LIMITS).unwrap();
        assert_eq!(found.files, BTreeSet::from([repo.path().join("include/val.h")]));
    }

    #[test]
    fn includes_after_a_comment_and_incbin_in_inline_assembly_are_keyed() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                (
                    "app/a.c",
                    "/* why */ #include \"../inc/a.h\"\n__asm__(\".incbin \\\"../data/blob.bin\\\"\");\n",
                ),
                ("inc/a.h", ""),
                ("data/blob.bin", "data"),
            ],
        );
        assert_eq!(
            found(root.path(), &[package(root.path(), "app", &["a.c"], &[])]),
            ["data/blob.bin", "inc/a.h"]
        );
    }

    #[test]
    fn comments_inside_directives_and_has_include_are_followed() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                (
                    "app/a.c",
                    "# /* x */ include /* y */ \"../inc/a.h\"\n\
                     #if defined(__has_include) && __has_include(\"../inc/opt.h\")\n\
                     #elif __has_include_next (<sys.h>) || __has_include(\"../inc/gone.h\")\n\
                     #endif\n",
                ),
                ("inc/a.h", ""),
                ("inc/opt.h", ""),
            ],
        );
        let sources = [package(root.path(), "app", &["a.c"], &[])];
        assert_eq!(found(root.path(), &sources), ["inc/a.h", "inc/opt.h"]);
        // A file asked about that appears later changes the key: it is found then.
        write(root.path(), &[("inc/gone.h", "")]);
        assert_eq!(found(root.path(), &sources), ["inc/a.h", "inc/gone.h", "inc/opt.h"]);
        write(root.path(), &[("app/b.c", "#if __has_include(NAME)\n#endif\n")]);
        let refused = refusal(&[package(root.path(), "app", &["b.c"], &[])], &LIMITS);
        assert!(refused.contains("__has_include NAME"), "{refused}");
    }

    #[test]
    fn a_fifo_in_the_tree_gives_no_key_and_is_not_waited_on() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), &[("cmd/app/a.S", ".incbin \"data.bin\"\n")]);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.path().join("cmd/app/data.bin"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let refusal = refusal(&[package(root.path(), "cmd/app", &["a.S"], &[])], &LIMITS);
        assert!(refusal.contains("not a regular file"), "{refusal}");
        assert!(
            open_regular(&root.path().join("cmd/app/data.bin")).is_err(),
            "opened without waiting, refused"
        );
    }

    #[test]
    fn a_file_of_endless_includes_gives_no_key() {
        let root = tempfile::tempdir().unwrap();
        let many: String = (0..=MAX_DIRECTIVES).map(|i| format!("#include \"a{i}.h\"\n")).collect();
        write(root.path(), &[("a.s", many.as_str()), ("a.h", "")]);
        let refusal = refusal(&[package(root.path(), "", &["a.s"], &[])], &LIMITS);
        assert!(refusal.contains("more than 4096 includes"), "{refusal}");
    }

    #[test]
    fn a_quoted_include_from_a_parent_directory_is_found() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                (
                    "cmd/app/val_amd64.s",
                    "#include \"textflag.h\"\n#include \"../../inc/val.h\"\nTEXT ·value(SB),NOSPLIT,$0-8\n",
                ),
                ("inc/val.h", "#define VALUE 1\n"),
            ],
        );
        assert_eq!(
            found(root.path(), &[package(root.path(), "cmd/app", &["val_amd64.s"], &[])]),
            ["inc/val.h"]
        );
    }

    #[test]
    fn includes_of_any_extension_are_followed_recursively() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                ("p/a.c", "#  include \"defs.inc\"\n"),
                ("p/defs.inc", "#include \"../shared/one.h\"\n"),
                // Relative to the including file, not to the package.
                ("shared/one.h", "#include_next \"sub/two.h\"\n"),
                ("shared/sub/two.h", "#include \\\n  \"three.def\"\n"),
                ("shared/sub/three.def", "X(1)\n"),
                ("p/m.F90", "      include 'consts.fi'\n      use shapes\n"),
                ("p/consts.fi", "integer, parameter :: n = 3\n"),
                // A compiled Fortran module `use` reads.
                ("p/shapes.mod", "compiled"),
            ],
        );
        assert_eq!(
            found(root.path(), &[package(root.path(), "p", &["a.c", "m.F90"], &[])]),
            [
                "p/consts.fi",
                "p/defs.inc",
                "p/shapes.mod",
                "shared/one.h",
                "shared/sub/three.def",
                "shared/sub/two.h"
            ]
        );
    }

    #[test]
    fn assembler_data_and_includes_are_found_but_data_is_not_read() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                ("p/blob.S", "\t.section .rodata\n\t.incbin \"../data/blob.bin\"\n\t.include \"macros.s\"\n"),
                ("p/macros.s", ".macro nop2\n.endm\n"),
                ("data/blob.bin", "#include \"not-a-header.h\"\n"),
                ("data/not-a-header.h", ""),
            ],
        );
        assert_eq!(
            found(root.path(), &[package(root.path(), "p", &["blob.S"], &[])]),
            ["data/blob.bin", "p/macros.s"]
        );
    }

    #[test]
    fn cgo_flags_name_files_through_srcdir() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                (
                    "p/x.go",
                    "package p\n\n// #cgo linux,amd64 LDFLAGS: ${SRCDIR}/lib/libx.a -L${SRCDIR}/libs -lfoo -Wl,-rpath,${SRCDIR}/rpath\n// #cgo CFLAGS: -O2 -I${SRCDIR}/../inc \"-DNAME=a b\"\n// #cgo pkg-config: png\n// #include \"val.h\"\n// #include <stdlib.h>\nimport \"C\"\n",
                ),
                ("p/lib/libx.a", "!<arch>\n"),
                ("p/lib/other.a", "not named"),
                ("p/libs/libfoo.so", ""),
                ("p/libs/libfoo.a", ""),
                ("p/libs/nested/deeper.a", ""),
                ("p/rpath/libbar.so", ""),
                ("inc/val.h", "#include \"more.h\"\n"),
                ("inc/more.h", ""),
                ("inc/unused.h", ""),
            ],
        );
        assert_eq!(
            found(root.path(), &[package(root.path(), "p", &[], &["x.go"])]),
            [
                "inc/more.h",
                "inc/unused.h",
                "inc/val.h",
                "p/lib/libx.a",
                "p/libs/libfoo.a",
                "p/libs/libfoo.so",
                "p/rpath/libbar.so"
            ]
        );
    }

    /// go passes a relative file in `#cgo LDFLAGS` as written and links where it runs: the
    /// scan read `p/lib/libfoo.a` while the linker took the module root's `lib/libfoo.a`, and
    /// an edited library kept the key.
    #[test]
    fn a_relative_file_in_cgo_ldflags_gives_no_key() {
        let root = tempfile::tempdir().unwrap();
        let cgo = |flags: &str| format!("package p\n\n// #cgo LDFLAGS: {flags}\nimport \"C\"\n");
        for flags in
            ["lib/libfoo.a", "-lm libfoo.a", "./x.o", "-Wl,--version-script=exports.map", "-Wl,lib/x.o"]
        {
            write(root.path(), &[("p/x.go", &cgo(flags)), ("lib/libfoo.a", "!<arch>\n")]);
            let refused = refusal(&[package(root.path(), "p", &[], &["x.go"])], &LIMITS);
            assert!(refused.contains("relative to where go runs"), "{flags}: {refused}");
        }
        for flags in [
            "-framework CoreFoundation -lm",
            "${SRCDIR}/lib/libfoo.a",
            "-L/usr/lib -lfoo",
            "-Wl,-soname,libfoo.so.1 -Wl,-rpath,$ORIGIN/../lib -Wl,--version-script=${SRCDIR}/exports.map",
            "-Wl,-z,relro,--hash-style=gnu",
            "-target x86_64-apple-macos10.12 -arch arm64",
        ] {
            write(root.path(), &[("p/x.go", &cgo(flags))]);
            found(root.path(), &[package(root.path(), "p", &[], &["x.go"])]);
        }
    }

    /// A module from the module cache is checked whole against go.sum: of its `#cgo` lines only
    /// paths leaving the checked modules count (another module's directory, named through
    /// `${SRCDIR}` or in full), not the tree scan's other rules nor run-time search paths.
    #[test]
    fn only_paths_leaving_a_checked_module_refuse_its_cgo_lines() {
        let cache = tempfile::tempdir().unwrap();
        let module = cache.path().join("example.com/m@v1.0.0");
        write(cache.path(), &[("example.com/other@v1.0.0/include/value.h", "#define VALUE 1\n")]);
        let check = |flags: &str| {
            let cgo = format!("package p\n\n// #cgo LDFLAGS: {flags}\nimport \"C\"\n");
            write(&module, &[("p/x.go", &cgo)]);
            refuse_flags_outside_modules(&[package(&module, "p", &[], &["x.go"])], cache.path(), &LIMITS)
        };
        for flags in [
            "-Wl,-rpath,$ORIGIN/../../../../lib -lm",
            "-Wl,-rpath,../../../../lib",
            "-framework CoreFoundation",
            "-l:libfoo.a -fmodules",
            "lib/libfoo.a -F${SRCDIR}/Frameworks",
            "-L/usr/lib -lfoo",
        ] {
            check(flags).unwrap_or_else(|refused| panic!("{flags}: {}", refused.0));
        }
        let full = format!("-I{}", cache.path().join("example.com/other@v1.0.0/include").display());
        for flags in ["-I${SRCDIR}/../../other@v1.0.0/include", full.as_str()] {
            let refused = check(flags).expect_err(flags).0;
            assert!(
                refused.contains("a module from the module cache") && refused.contains("outside"),
                "{refused}"
            );
        }
    }

    #[test]
    fn only_the_comments_of_a_cgo_file_are_read() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                (
                    "p/x.go",
                    "package p\n\n/*\n#include \"in_block.h\"\n*/\nimport \"C\"\n\nconst a = \"// #include \\\"in_string.h\\\"\"\nconst b = `\n#include \"in_raw.h\"\n#include %s\n`\nvar c = '/' // #include \"after_rune.h\"\n",
                ),
                ("p/in_block.h", ""),
                ("p/in_string.h", ""),
                ("p/in_raw.h", ""),
                ("p/after_rune.h", ""),
            ],
        );
        assert_eq!(
            found(root.path(), &[package(root.path(), "p", &[], &["x.go"])]),
            ["p/after_rune.h", "p/in_block.h"]
        );
    }

    /// System headers are found by the compiler in its own directories, like go's
    /// textflag.h and go_asm.h: they are not the sources' and are not keyed.
    #[test]
    fn system_and_generated_headers_are_not_keyed() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                (
                    "p/a.c",
                    "#include <stdio.h>\n#include \"stdlib.h\"\n#include \"_cgo_export.h\"\n#import <Foundation/Foundation.h>\n",
                ),
                (
                    "p/a_amd64.s",
                    "#include \"go_asm.h\"\n#include \"textflag.h\"\n// #include \"commented.h\"\n",
                ),
                ("p/commented.h", ""),
            ],
        );
        assert!(found(root.path(), &[package(root.path(), "p", &["a.c", "a_amd64.s"], &[])]).is_empty());
    }

    /// go passes the package directory to the C compiler as -I, so an angle-bracket include
    /// may be the package's, or be in a `#cgo` include directory's subdirectory.
    #[test]
    fn angle_bracket_includes_are_looked_up_in_the_include_directories() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                (
                    "p/x.go",
                    "package p\n\n// #cgo CFLAGS: -I${SRCDIR}/include\n// #include <lib/api.h>\nimport \"C\"\n",
                ),
                ("p/include/lib/api.h", "#include <config.h>\n#include <stdint.h>\n"),
                ("p/config.h", ""),
            ],
        );
        assert_eq!(
            found(root.path(), &[package(root.path(), "p", &[], &["x.go"])]),
            ["p/config.h", "p/include/lib/api.h"]
        );
    }

    /// go's action ID for a package hashes the files go lists for it, not another package's.
    #[test]
    fn files_beyond_a_package_own_are_unseen_by_go() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                ("a/a_amd64.s", "#include \"textflag.h\"\n#include \"a.h\"\n"),
                ("a/a.h", ""),
                ("b/b_amd64.s", "#include \"../a/a.h\"\n"),
            ],
        );
        let a = package(root.path(), "a", &["a_amd64.s", "a.h"], &[]);
        let b = package(root.path(), "b", &["b_amd64.s"], &[]);
        let own = inputs(std::slice::from_ref(&a), None, None, &LIMITS).unwrap();
        assert!(own.unseen_by_go.is_empty(), "{own:?}");
        let other = inputs(&[a, b], None, None, &LIMITS).unwrap();
        assert_eq!(other.unseen_by_go, BTreeSet::from([root.path().join("a/a.h")]), "{other:?}");
        assert_eq!(other.files.len(), 1, "{other:?}");
    }

    #[test]
    fn include_cycles_end() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                ("p/a.c", "#include \"../h/a.h\"\n"),
                ("h/a.h", "#include \"b.h\"\n#include \"a.h\"\n"),
                ("h/b.h", "#include \"../h/a.h\"\n#include \"./b.h\"\n"),
            ],
        );
        assert_eq!(found(root.path(), &[package(root.path(), "p", &["a.c"], &[])]), ["h/a.h", "h/b.h"]);
    }

    #[test]
    fn past_the_limits_there_is_no_key() {
        let root = tempfile::tempdir().unwrap();
        let mut files = vec![("p/a.c".to_owned(), String::new())];
        for i in 0..10 {
            files[0].1.push_str(&format!("#include \"../h/{i}.h\"\n"));
            files.push((format!("h/{i}.h"), "/* header */\n".to_owned()));
        }
        let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
        write(root.path(), &files);
        let packages = [package(root.path(), "p", &["a.c"], &[])];
        // a.c, then each header found and read.
        assert!(inputs(&packages, None, None, &Limits { files: 21, bytes: 1 << 20 }).is_ok());
        let err = refusal(&packages, &Limits { files: 20, bytes: 1 << 20 });
        assert!(err.contains("more than 20 files"), "{err}");
        let err = refusal(&packages, &Limits { files: 100, bytes: 100 });
        assert!(err.contains("more than 100 bytes"), "{err}");
    }

    #[test]
    fn an_include_named_by_a_macro_gives_no_key() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), &[("p/a.c", "#define H \"x.h\"\n#include H\n")]);
        let err = refusal(&[package(root.path(), "p", &["a.c"], &[])], &LIMITS);
        assert!(err.contains("named by a macro (include H)"), "{err}");
    }

    #[test]
    fn every_local_candidate_is_keyed() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                ("p/sub/a.h", "#include \"c.h\"\n"),
                ("p/sub/c.h", ""),
                ("p/c.h", ""),
                ("p/x.go", "package p\n\n// #cgo CPPFLAGS: -I inc\n// #include \"sub/a.h\"\nimport \"C\"\n"),
                ("p/inc/c.h", ""),
            ],
        );
        assert_eq!(
            found(root.path(), &[package(root.path(), "p", &[], &["x.go"])]),
            ["p/c.h", "p/inc/c.h", "p/sub/a.h", "p/sub/c.h"]
        );
    }

    #[test]
    fn paths_are_cleaned_lexically() {
        assert_eq!(clean(Path::new("/m/cmd/app/../../inc/./val.h")), Path::new("/m/inc/val.h"));
        assert_eq!(clean(Path::new("/../x")), Path::new("/x"));
        assert_eq!(clean(Path::new("a/../../b")), Path::new("../b"));
    }

    #[test]
    fn cgo_lines_split_like_cgo() {
        assert_eq!(split_quoted(r#"-I"a b" 'c d'\ e  -lx"#), ["-Ia b", "c d e", "-lx"]);
    }

    /// What gcc takes for a directive, the scan does too: a first line after a byte order
    /// mark, lines ended by a carriage return alone, and `??=` for `#`. Where the compiler's
    /// mode decides (a line continued by `??/`), there is no key.
    #[test]
    fn includes_hidden_by_line_ends_marks_and_trigraphs_are_found() {
        let cases = [
            ("a byte order mark", "\u{feff}#include \"../inc/val.h\"\nint v;\n"),
            ("carriage returns alone", "int dummy;\r#include \"../inc/val.h\"\rint v;\r"),
            ("a continuation at a CRLF", "#include \\\r\n\"../inc/val.h\"\r\n"),
            ("the trigraph of #", "??=include \"../inc/val.h\"\n"),
        ];
        for (what, source) in cases {
            let root = tempfile::tempdir().unwrap();
            write(root.path(), &[("p/v.c", source), ("inc/val.h", "#define VALUE 1\n")]);
            let found = found(root.path(), &[package(root.path(), "p", &["v.c"], &[])]);
            assert_eq!(found, ["inc/val.h"], "{what}");
        }
        let root = tempfile::tempdir().unwrap();
        write(root.path(), &[("p/v.c", "#inc??/\nlude \"../inc/val.h\"\n"), ("inc/val.h", "")]);
        let refusal = refusal(&[package(root.path(), "p", &["v.c"], &[])], &LIMITS);
        assert!(refusal.contains("??/"), "{refusal}");
    }

    /// gcc reads `x.h.gch` in place of `x.h`, clang `x.h.pch`: a precompiled header next to an
    /// include (or a `-include`) gives no key.
    #[test]
    fn a_precompiled_header_gives_no_key() {
        for (source, cgo) in [
            ("#include \"val.h\"\n", "package p\n"),
            ("int v;\n", "package p\n\n// #cgo CFLAGS: -include ${SRCDIR}/val.h\nimport \"C\"\n"),
        ] {
            let root = tempfile::tempdir().unwrap();
            write(root.path(), &[("p/v.c", source), ("p/p.go", cgo), ("p/val.h", "#define VALUE 1\n")]);
            let sources = [package(root.path(), "p", &["v.c"], &["p.go"])];
            assert!(inputs(&sources, None, None, &LIMITS).is_ok());
            for precompiled in ["val.h.gch", "val.h.pch"] {
                write(root.path(), &[(&format!("p/{precompiled}"), "compiled from another val.h")]);
                let refusal = refusal(&sources, &LIMITS);
                assert!(refusal.contains(precompiled) && refusal.contains("precompiled"), "{refusal}");
                std::fs::remove_file(root.path().join("p").join(precompiled)).unwrap();
            }
        }
    }

    /// A sysroot, prefix or framework directory in the tree makes the compiler find headers by
    /// names the scan cannot follow.
    #[test]
    fn a_sysroot_in_the_tree_gives_no_key() {
        for flag in ["--sysroot=${SRCDIR}/sys", "-isysroot ${SRCDIR}/sys", "--sysroot sys", "-F${SRCDIR}/sys"]
        {
            let root = tempfile::tempdir().unwrap();
            let cgo = format!("package p\n\n// #cgo CFLAGS: {flag}\n// #include <myval.h>\nimport \"C\"\n");
            write(root.path(), &[("p/p.go", &cgo), ("p/sys/usr/include/myval.h", "#define VAL 1\n")]);
            let refusal = refusal(&[package(root.path(), "p", &[], &["p.go"])], &LIMITS);
            assert!(refusal.contains("sysroot"), "{flag}: {refusal}");
        }
    }

    /// A library the linker takes from a `-L` directory, or one named outright, that is a
    /// linker script or a thin archive names files of its own: no key. Real archives are keyed.
    #[test]
    fn linker_scripts_and_thin_archives_give_no_key() {
        let cgo = |flags: &str| format!("package p\n\n// #cgo LDFLAGS: {flags}\nimport \"C\"\n");
        for (flags, library, what) in [
            ("-L${SRCDIR}/lib -lval", "INPUT(sub/libreal.a)\n", "a linker script"),
            ("-L${SRCDIR}/lib -lval", "!<thin>\n/               0  ", "a thin archive"),
            ("${SRCDIR}/lib/libval.so", "GROUP ( sub/libreal.a )\n", "a linker script"),
        ] {
            let root = tempfile::tempdir().unwrap();
            write(
                root.path(),
                &[("p/p.go", &cgo(flags)), ("p/lib/libval.so", library), ("p/lib/sub/libreal.a", "")],
            );
            let refusal = refusal(&[package(root.path(), "p", &[], &["p.go"])], &LIMITS);
            assert!(refusal.contains(what), "{flags}: {refusal}");
        }
        for (flags, library) in [
            ("-L${SRCDIR}/lib -lval", "/* \u{e9} */ INPUT(sub/libreal.a)\n"),
            ("-L${SRCDIR}/lib -l:bar.ld", "\x7fELF"),
        ] {
            let root = tempfile::tempdir().unwrap();
            write(
                root.path(),
                &[("p/p.go", &cgo(flags)), ("p/lib/libval.so", library), ("p/lib/bar.ld", "INPUT(x)")],
            );
            assert!(
                inputs(&[package(root.path(), "p", &[], &["p.go"])], None, None, &LIMITS).is_err(),
                "{flags}"
            );
        }
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                ("p/p.go", &cgo("-L${SRCDIR}/lib -lval")),
                ("p/lib/libval.a", "!<arch>\n"),
                ("p/lib/README", "text"),
            ],
        );
        let found = found(root.path(), &[package(root.path(), "p", &[], &["p.go"])]);
        assert_eq!(found, ["p/lib/README", "p/lib/libval.a"]);
    }

    /// Directives the preprocessor sees past what a line-by-line reading would: after a
    /// comment that spans lines, across a backslash followed by blanks, after blank padding
    /// longer than a line is kept, and after a C++ raw string holding a quote and `/*`.
    #[test]
    fn directives_are_read_after_comments_splices_padding_and_raw_strings() {
        let cases = [
            ("a comment across lines", "/* a\n */ #include \"../inc/v.h\"\n"),
            ("a comment inside the directive", "#include /*\n*/ \"../inc/v.h\"\n"),
            ("a backslash and blanks before the line end", "#inc\\  \nlude \"../inc/v.h\"\n"),
            ("long padding", &format!("{}#include \"../inc/v.h\"\n", " ".repeat(9000))),
            ("a raw string", "const char *s = R\"x(a\"b/*)x\";\n#include \"../inc/v.h\"\n"),
            ("SWIG's %{ on the include's line", "%{ #include \"../inc/v.h\" %}\n"),
        ];
        for (what, source) in cases {
            let root = tempfile::tempdir().unwrap();
            write(root.path(), &[("p/v.c", source), ("inc/v.h", "#define VALUE 1\n")]);
            assert_eq!(
                found(root.path(), &[package(root.path(), "p", &["v.c"], &[])]),
                ["inc/v.h"],
                "{what}"
            );
        }
        // A line whose directive lies past the part kept gives no key.
        let root = tempfile::tempdir().unwrap();
        let padded = format!("#include{}\"../inc/v.h\"\n", " ".repeat(9000).replace("  ", " x"));
        write(root.path(), &[("p/v.c", &padded), ("inc/v.h", "")]);
        assert!(refusal(&[package(root.path(), "p", &["v.c"], &[])], &LIMITS).contains("longer than"));
    }

    /// A `#cgo` flag that changes how the compiler reads sources (their character set) makes
    /// a line the scan reads as text something else: no key.
    #[test]
    fn flags_that_change_how_sources_are_read_give_no_key() {
        let root = tempfile::tempdir().unwrap();
        let cgo = "package p\n\n// #cgo CFLAGS: -finput-charset=ISO-2022-JP\nimport \"C\"\n";
        write(root.path(), &[("p/p.go", cgo)]);
        let refusal = refusal(&[package(root.path(), "p", &[], &["p.go"])], &LIMITS);
        assert!(refusal.contains("-finput-charset"), "{refusal}");
        assert!(
            refuse_reading_flags("-O2 -g").is_ok() && refuse_reading_flags("-O2 -traditional-cpp").is_err()
        );
    }

    /// With clang's `-fmodules`, `#include "a.h"` imports the module a `module.modulemap`
    /// beside it declares, and every header the map names (a tenant's `evil.h` redefining a
    /// macro) is read: none of it keyed, so one tree's binary went to another. Module flags
    /// in any spelling give no key; turning modules off keeps it.
    #[test]
    fn module_flags_give_no_key() {
        let root = tempfile::tempdir().unwrap();
        for flags in [
            "-fmodules",
            "-O2 -fmodules-ts",
            "-fcxx-modules",
            "-fmodule-map-file=${SRCDIR}/m.modulemap",
            "-fimplicit-module-maps",
            "-Xclang -fmodules",
            "-Wp,-fmodules",
            "-fprebuilt-module-path=/tmp",
            "\"-fmodules\"",
            "'-fmodules'",
            "-fmodu''les",
            "-fmod\\ules",
            "'-Wp,-fmodules'",
        ] {
            let cgo = format!("package p\n\n// #cgo CFLAGS: {flags}\n// #include \"a.h\"\nimport \"C\"\n");
            write(
                root.path(),
                &[("p/p.go", cgo.as_str()), ("p/a.h", ""), ("p/module.modulemap", "module M {}\n")],
            );
            let refusal = refusal(&[package(root.path(), "p", &[], &["p.go"])], &LIMITS);
            assert!(refusal.contains("changes how it reads sources"), "{flags}: {refusal}");
        }
        assert!(refuse_reading_flags("-fno-modules -O2").is_ok());
    }

    /// cgo makes its preamble of a group of comments one after the other, a block comment's
    /// text with nothing after it: `/*#inc*/` then `/*lude "x"*/` is an include. Groups apart
    /// (a blank line, code) stay apart.
    #[test]
    fn a_preamble_is_read_as_cgo_joins_its_comments() {
        for preamble in [
            "/*\n#inc*/\n/*lude \"../inc/v.h\"\n*/\n",
            "/* unrelated */\n\n/*#include \"../inc/v.h\"*/\n",
            "// #include \"../inc/v.h\"\n",
        ] {
            let root = tempfile::tempdir().unwrap();
            let cgo = format!("package p\n\n{preamble}import \"C\"\n");
            write(root.path(), &[("p/p.go", &cgo), ("inc/v.h", "")]);
            assert_eq!(
                found(root.path(), &[package(root.path(), "p", &[], &["p.go"])]),
                ["inc/v.h"],
                "{preamble}"
            );
        }
    }

    /// What the C reader makes of one group of a Go file's comments does not carry into the
    /// next (a `/*` in a doc comment opens no comment in the preamble); `#cgo` lines are read
    /// line by line as go/build reads them, a C comment around one or a carriage return in it
    /// notwithstanding.
    #[test]
    fn each_comment_group_of_a_go_file_is_read_on_its_own() {
        for go in [
            "package p\n\n// reads testdata/*.json\nvar x = 1\n\n// #include \"../inc/v.h\"\nimport \"C\"\n",
            "package p\n\n/*\n#cgo CFLAGS: -I${SRCDIR}/../inc\n*/\n// #include <v.h>\nimport \"C\"\n",
            "package p\n\n// #cgo CFLAGS: -O2 \r-I${SRCDIR}/../inc\n// #include <v.h>\nimport \"C\"\n",
            "package p\n\n// char *s = \"\r/*\";\n// #include \"../inc/v.h\"\nimport \"C\"\n",
            "package p\n\n// reads testdata/*.json\nvar x = 1\n\n// #include \\\n// \"../inc/v.h\"\nimport \"C\"\n",
            // `*\r/` ends no Go comment (go's scanner keeps that carriage return).
            "package p\n\n/*\n// x *\r// y\n#include \"../inc/v.h\"\n*/\nimport \"C\"\n",
        ] {
            let root = tempfile::tempdir().unwrap();
            write(root.path(), &[("p/p.go", go), ("inc/v.h", "")]);
            assert_eq!(
                found(root.path(), &[package(root.path(), "p", &[], &["p.go"])]),
                ["inc/v.h"],
                "{go:?}"
            );
        }
    }

    /// gcc takes `-include` joined to its file, as `--include=`, and through `-Wp,`: the file
    /// is read as source, so what it includes is keyed too.
    #[test]
    fn every_spelling_of_include_in_cgo_flags_reads_its_file() {
        for flag in [
            "-include${SRCDIR}/../inc/pre.h",
            "--include=${SRCDIR}/../inc/pre.h",
            "-Wp,-include,${SRCDIR}/../inc/pre.h",
        ] {
            let go = format!("package p\n\n// #cgo CFLAGS: {flag}\nimport \"C\"\n");
            let root = tempfile::tempdir().unwrap();
            write(
                root.path(),
                &[("p/p.go", go.as_str()), ("inc/pre.h", "#include \"v.h\"\n"), ("inc/v.h", "")],
            );
            let mut found = found(root.path(), &[package(root.path(), "p", &[], &["p.go"])]);
            found.sort();
            assert_eq!(found, ["inc/pre.h", "inc/v.h"], "{flag}");
        }
    }

    /// Text in a comment that only looks like a directive refuses nothing: the line as it is
    /// only adds files it names outright.
    #[test]
    fn a_comment_about_directives_gives_a_key() {
        let root = tempfile::tempdir().unwrap();
        let source = "/*\n * Uses the assembler's .incbin directive, and #include MACRO.\n */\nint x;\n";
        write(root.path(), &[("p/v.c", source)]);
        assert!(found(root.path(), &[package(root.path(), "p", &["v.c"], &[])]).is_empty());
    }

    /// Where the lexer's reading of literals and comments may not be the compiler's (`$` in an
    /// identifier, digit separators, a splice in a raw string, a header name's backslash), a
    /// directive at a line's start is still found.
    #[test]
    fn a_directive_at_a_lines_start_is_found_whatever_the_lexer_thinks() {
        for source in [
            "#define $R x\nconst char *s = $R\"x(\";\n#include \"../inc/v.h\"\n",
            "int a = 1'000; int b = '/*';\n#include \"../inc/v.h\"\n",
            "const char *s = R\"x(a)x\\\n\"/*)x\";\n#include \"../inc/v.h\"\n// */\n",
        ] {
            let root = tempfile::tempdir().unwrap();
            write(root.path(), &[("p/v.cc", source), ("inc/v.h", "")]);
            let found = found(root.path(), &[package(root.path(), "p", &["v.cc"], &[])]);
            assert!(found.contains(&"inc/v.h".to_owned()), "{source:?}: {found:?}");
        }
    }

    /// go's assembler reads an `#include` name as a Go string (`"inc\x2fmagic.h"` is
    /// inc/magic.h), a C compiler as it is: a name with a backslash gives no key, quoted or
    /// in angle brackets, in any file, and wherever a reading finds it (`#include "a\" "/*"`).
    #[test]
    fn an_include_name_with_a_backslash_gives_no_key() {
        for (file, source) in [
            ("magic_amd64.s", "#include \"textflag.h\"\n#include \"inc\\x2fmagic.h\"\n"),
            ("magic_amd64.s", "#include \"inc\\u002fmagic.h\"\n"),
            ("magic_amd64.s", "# /* c */ include \"inc\\057magic.h\" // x\n"),
            ("v.c", "#include <inc\\x2fmagic.h>\n"),
            ("v.cc", "#include \"a\\\" \"/*\"\n#include \"../inc/v.h\"\n"),
        ] {
            let root = tempfile::tempdir().unwrap();
            write(
                root.path(),
                &[(format!("p/{file}").as_str(), source), ("p/inc/magic.h", "#define MAGIC 666\n")],
            );
            let refused = refusal(&[package(root.path(), "p", &[file], &[])], &LIMITS);
            assert!(refused.contains("backslash") && refused.contains(file), "{source:?}: {refused}");
        }
        let root = tempfile::tempdir().unwrap();
        let go = "package p\n\n// #include \"inc\\x2fmagic.h\"\nimport \"C\"\n";
        write(root.path(), &[("p/x.go", go), ("p/inc/magic.h", "")]);
        let refused = refusal(&[package(root.path(), "p", &[], &["x.go"])], &LIMITS);
        assert!(refused.contains("backslash"), "{refused}");
    }

    /// The compiler runs in the package directory: `-I/proc/self/cwd/inc` is the package's
    /// inc, which neither the build key nor go's cache read. An absolute path in a `#cgo` line
    /// that may lead into the build's own tree gives no key, in every form a flag names it;
    /// the machine's own paths (`/usr/include`) keep the key.
    #[test]
    fn cgo_flags_with_absolute_paths_into_the_tree_give_no_key() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        write(root.path(), &[("p/inc/greet.h", "#define V 2\n"), ("p/lib/libx.a", "!<arch>\n")]);
        let tree_link = elsewhere.path().join("tree");
        std::os::unix::fs::symlink(root.path().join("p"), &tree_link).unwrap();
        let proc_link = elsewhere.path().join("cwd");
        std::os::unix::fs::symlink("/proc/self/cwd", &proc_link).unwrap();
        let inside = root.path().join("p/inc").display().to_string();
        let dotted = format!("/usr/..{}", root.path().join("p/inc").display());
        let linked = tree_link.join("inc").display().to_string();
        let through_proc = proc_link.join("inc").display().to_string();
        for flags in [
            "CFLAGS: -I/proc/self/cwd/inc".to_owned(),
            "CFLAGS: -I /proc/self/cwd/inc".to_owned(),
            "CPPFLAGS: -iquote/proc/self/cwd/inc".to_owned(),
            "CXXFLAGS: -isystem /proc/self/cwd/inc".to_owned(),
            "FFLAGS: -idirafter/dev/fd/../cwd/inc".to_owned(),
            "CFLAGS: -I=/proc/self/cwd/inc".to_owned(),
            "CFLAGS: -I$SYSROOT/proc/self/cwd/inc".to_owned(),
            "CFLAGS: --sysroot=/proc/self/cwd".to_owned(),
            "CFLAGS: -include /proc/self/cwd/inc/greet.h".to_owned(),
            "CFLAGS: '-I/proc/self/cwd/inc'".to_owned(),
            "LDFLAGS: -L/proc/self/cwd/lib -lx".to_owned(),
            "LDFLAGS: /proc/self/cwd/lib/libx.a".to_owned(),
            "LDFLAGS: -Wl,-L,/proc/self/cwd/lib".to_owned(),
            "LDFLAGS: -Wl,-rpath=/proc/thread-self/cwd/lib".to_owned(),
            "linux,amd64 CFLAGS: -I/proc/1234/cwd/inc".to_owned(),
            format!("CFLAGS: -I{inside}"),
            format!("CFLAGS: -I{dotted}"),
            format!("CFLAGS: -I{linked}"),
            format!("CFLAGS: -I{through_proc}"),
        ] {
            let go = format!("package p\n\n// #cgo {flags}\n// #include \"greet.h\"\nimport \"C\"\n");
            write(root.path(), &[("p/x.go", go.as_str())]);
            let refused = inputs(&[package(root.path(), "p", &[], &["x.go"])], None, None, &LIMITS);
            let refused = refused.expect_err(&flags).0;
            assert!(refused.contains("a #cgo flag of"), "{flags}: {refused}");
        }
        // The machine's paths are the machine's.
        let go = "package p\n\n// #cgo CFLAGS: -I/usr/include -isystem /usr/local/include -I=/usr/include\n\
                  // #cgo LDFLAGS: -L/usr/lib -lm -Wl,-rpath,/usr/lib /usr/lib/libnothere.a\n\
                  // #include \"inc/greet.h\"\nimport \"C\"\n";
        write(root.path(), &[("p/x.go", go)]);
        assert_eq!(found(root.path(), &[package(root.path(), "p", &[], &["x.go"])]), ["p/inc/greet.h"]);
    }

    /// The kernel takes `..` after a link to the parent of the link's target: with `lnk` a link
    /// to `a/b`, gcc reads `lnk/../inc` as `a/inc`, which a lexical reading took for the
    /// package's `inc`. A `..` after a link gives no key, in #cgo flags and include names alike;
    /// one after a directory keeps it.
    #[test]
    fn a_parent_step_after_a_link_gives_no_key() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[("p/inc/v.h", "#define V 42\n"), ("p/a/b/x", ""), ("p/a/inc/v.h", "#define V 666\n")],
        );
        std::os::unix::fs::symlink("a/b", root.path().join("p/lnk")).unwrap();
        for (cgo, include) in [
            ("#cgo CFLAGS: -I${SRCDIR}/lnk/../inc", "v.h"),
            ("#cgo CFLAGS: -Ilnk/../inc", "v.h"),
            ("#cgo CFLAGS: -include lnk/../inc/v.h", "inc/v.h"),
            ("#cgo CFLAGS: -I${SRCDIR}/lnk", "../inc/v.h"),
            ("", "lnk/../inc/v.h"),
        ] {
            let go = format!("package p\n\n// {cgo}\n// #include \"{include}\"\nimport \"C\"\n");
            write(root.path(), &[("p/x.go", go.as_str())]);
            let refused = refusal(&[package(root.path(), "p", &[], &["x.go"])], &LIMITS);
            assert!(refused.contains("a symbolic link"), "{cgo} {include}: {refused}");
        }
        let go =
            "package p\n\n// #cgo CFLAGS: -I${SRCDIR}/a/b/../../inc\n// #include \"v.h\"\nimport \"C\"\n";
        write(root.path(), &[("p/x.go", go)]);
        assert_eq!(found(root.path(), &[package(root.path(), "p", &[], &["x.go"])]), ["p/inc/v.h"]);
    }

    /// A digit separator (`1'0`) is no character literal and `0'R"` opens no raw string: read
    /// as one, what follows (`'/*'` here) hid a spliced include, which only the lexer can
    /// read, up to the next `*/`. Whether `'` separates digits depends on the standard, so
    /// both readings count.
    #[test]
    fn digit_separators_hide_no_spliced_include() {
        for source in [
            "int a = 1'0'/*';\n#inc\\\nlude \"../inc/v.h\"\n// */\n",
            "int a = 0x1'f'/*';\n#inc\\\nlude \"../inc/v.h\"\n// */\n",
            "const char *s = 0'R\"x(\";\n#inc\\\nlude \"../inc/v.h\"\n// )x\"\n",
        ] {
            let root = tempfile::tempdir().unwrap();
            write(root.path(), &[("p/v.cc", source), ("inc/v.h", "")]);
            let found = found(root.path(), &[package(root.path(), "p", &["v.cc"], &[])]);
            assert_eq!(found, ["inc/v.h"], "{source:?}");
        }
        // In C before C23 (gcc's default for .c files) `1'a'` is a number and a character
        // literal: read only with separators, `' '` hid the same spliced include.
        let c = "#define S(x) #x\nconst char *s = S(1'a' '/*');\n#inc\\\nlude \"../inc/v.h\"\n// */\n";
        let root = tempfile::tempdir().unwrap();
        write(root.path(), &[("p/v.c", c), ("inc/v.h", "")]);
        assert_eq!(found(root.path(), &[package(root.path(), "p", &["v.c"], &[])]), ["inc/v.h"], "{c:?}");
    }

    /// Where the scan's reading of literals is not the compiler's, the scan may see a comment
    /// the compiler does not: a raw string whose end a splice moves (gcc keeps splices inside
    /// raw strings), `R"` after a pp-number with an exponent sign, a trigraph `??/` in an ISO
    /// mode. A spliced include in such a "comment" was missed by every reading: a comment's
    /// lines are now read for the files they name too.
    #[test]
    fn a_spliced_include_in_what_the_scan_takes_for_a_comment_is_found() {
        let tail = "#inc\\\nlude \"../inc/v.h\"\n// */\n";
        for head in [
            "#define S(...) #__VA_ARGS__\nstatic const char *s = S(R\"x( )x\\\n\" /* )x\");\n",
            "#define S(...) #__VA_ARGS__\nstatic const char *s = S((1e+R\"x(\")x\"/*\");\n",
            "static const char *s = \"??/\" /* \";\n",
        ] {
            let source = format!("{head}{tail}");
            let root = tempfile::tempdir().unwrap();
            write(root.path(), &[("p/v.c", source.as_str()), ("inc/v.h", "")]);
            let found = found(root.path(), &[package(root.path(), "p", &["v.c"], &[])]);
            assert_eq!(found, ["inc/v.h"], "{source:?}");
        }
    }

    /// Where the scan takes code for a comment (here a raw string ended by a splice, which gcc
    /// keeps inside it), an include named by a macro there was dropped, and a spliced include
    /// after a form feed was not seen as a directive: the first now gives no key, the second
    /// is found, by a reading of every logical line as splices make it.
    #[test]
    fn what_the_scan_takes_for_a_comment_hides_no_include() {
        let head = "static const char *s = R\"x(a)x\\\n\" /*\";\n)x\";\n";
        let computed = format!("#define HDR \"../inc/v.h\"\n{head}#include HDR\n");
        let root = tempfile::tempdir().unwrap();
        write(root.path(), &[("p/v.c", computed.as_str()), ("inc/v.h", "")]);
        let refused = refusal(&[package(root.path(), "p", &["v.c"], &[])], &LIMITS);
        assert!(refused.contains("macro"), "{computed:?}: {refused}");
        let form_feed = format!("{head}\x0c#inc\\\nlude \"../inc/v.h\"\n");
        let root = tempfile::tempdir().unwrap();
        write(root.path(), &[("p/v.c", form_feed.as_str()), ("inc/v.h", "")]);
        assert_eq!(
            found(root.path(), &[package(root.path(), "p", &["v.c"], &[])]),
            ["inc/v.h"],
            "{form_feed:?}"
        );
    }

    /// A fourth review's cases: a NUL byte (gcc's blank), a directive after `*/` where the
    /// lexer took the comment for a raw string, a header name with a comment in it, a
    /// directive behind 8 KiB of blanks, `__has_include` in a macro.
    #[test]
    fn lines_the_compiler_may_read_otherwise_are_found_or_give_no_key() {
        let spaces = " ".repeat(9000);
        let found_cases = [
            "static const char *s = R\"x(a)x\\\n\" R\"y( )x\";\n/* c\n*/ #inc\\\nlude \"../inc/v.h\"\n// )y\"\n".to_owned(),
            format!("static const char *s = R\"x(a)x\\\n\" /* )x\";\n{spaces}#inc\\\nlude \"../inc/v.h\"\n// */\n"),
        ];
        for source in &found_cases {
            let root = tempfile::tempdir().unwrap();
            write(root.path(), &[("p/v.c", source.as_str()), ("inc/v.h", "")]);
            let found = found(root.path(), &[package(root.path(), "p", &["v.c"], &[])]);
            assert_eq!(found, ["inc/v.h"], "{:?}", &source[..source.len().min(120)]);
        }
        for (source, why) in [
            ("#\0include \"../inc/v.h\"\n", "NUL"),
            ("#include <d/*x*/h.h>\n", "comment in it"),
            ("#define HI __has_include(\"../inc/zz.h\")\n#if HI\n#endif\n", "__has_include"),
        ] {
            let root = tempfile::tempdir().unwrap();
            write(root.path(), &[("p/v.c", source), ("inc/v.h", "")]);
            let refused = refusal(&[package(root.path(), "p", &["v.c"], &[])], &LIMITS);
            assert!(refused.contains(why), "{source:?}: {refused}");
        }
        // Past the cut of a long line, text that may name a file (here after a `*/`, which
        // Go's assembler reads as the end of a line comment's next line).
        let padded = format!("// see below \\\n/*{}*/#include \"../inc/v.h\"\n", "x".repeat(9000));
        let root = tempfile::tempdir().unwrap();
        write(root.path(), &[("p/v.s", padded.as_str()), ("inc/v.h", "")]);
        let refused = refusal(&[package(root.path(), "p", &["v.s"], &[])], &LIMITS);
        assert!(refused.contains("longer than"), "{refused}");
        let embed = "#if __has_embed(\"../inc/v.h\")\n#endif\n";
        let root = tempfile::tempdir().unwrap();
        write(root.path(), &[("p/v.c", embed), ("inc/v.h", "")]);
        assert_eq!(
            found(root.path(), &[package(root.path(), "p", &["v.c"], &[])]),
            ["inc/v.h"],
            "__has_embed"
        );
        let portable = "#ifdef __has_include\n#if __has_include(\"../inc/v.h\")\n#endif\n#endif\n\
                        #include <stdio.h> /* see <a//b> */\n";
        let root = tempfile::tempdir().unwrap();
        write(root.path(), &[("p/v.c", portable), ("inc/v.h", "")]);
        assert_eq!(found(root.path(), &[package(root.path(), "p", &["v.c"], &[])]), ["inc/v.h"]);
    }

    /// The assembler's `.incbin` and `.include` after a label or `;`, and in inline assembly
    /// with a tab written as `\t`; a file named otherwise (a macro's argument, a string pasted
    /// together) gives no key.
    #[test]
    fn assembler_reads_anywhere_in_a_line_are_found_or_give_no_key() {
        let cases = [
            ("p/a.S", "blob: .incbin \"../data/blob.bin\"\n\tnop; .include \"m.s\"\n"),
            (
                "p/a.c",
                "__asm__(\".incbin\\t\\\"../data/blob.bin\\\"\");\n__asm__(\".include \\\"m.s\\\"\");\n",
            ),
        ];
        for (file, source) in cases {
            let root = tempfile::tempdir().unwrap();
            write(root.path(), &[(file, source), ("data/blob.bin", "data"), ("p/m.s", "")]);
            let name = file.trim_start_matches("p/");
            let mut found = found(root.path(), &[package(root.path(), "p", &[name], &[])]);
            found.sort();
            assert_eq!(found, ["data/blob.bin", "p/m.s"], "{file}");
        }
        for source in [
            ".macro blob f\n.incbin \"\\f\"\n.endm\n",
            "#define INCBIN(f) __asm__(\".incbin \\\"\" f \"\\\"\")\n",
        ] {
            let root = tempfile::tempdir().unwrap();
            write(root.path(), &[("p/a.S", source)]);
            let refusal = refusal(&[package(root.path(), "p", &["a.S"], &[])], &LIMITS);
            assert!(refusal.contains("incbin"), "{source}: {refusal}");
        }
    }
}
