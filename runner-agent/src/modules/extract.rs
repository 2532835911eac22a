//! Reading and extracting a module zip exactly as the go command would, or leaving it to it.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// The go command's limit on a module zip's extracted size (golang.org/x/mod/zip).
const MAX_EXTRACTED: u64 = 500 << 20;

/// What a file or directory costs on disk at least: a file's bytes are rounded up to it.
pub(super) const BLOCK: u64 = crate::taskdir::ENTRY_COST;

/// The go command's limit on a module zip's own size (golang.org/x/mod/zip.MaxZipFile).
const MAX_ZIP: u64 = 500 << 20;

/// The most central directory the agent parses: every entry parsed takes memory, a few
/// hundred bytes beyond its name. Module zips of tens of thousands of files need a few MiB.
const MAX_DIRECTORY: u64 = 32 << 20;

/// What starts every central directory header, and the bytes of its fixed part.
const HEADER_SIGNATURE: &[u8; 4] = b"PK\x01\x02";
const HEADER_FIXED: usize = 46;

/// What the zip parser could read into memory: every central directory header in the file,
/// wherever an end record says the directory starts.
#[derive(Debug, Default)]
struct Headers {
    entries: u64,
    /// Their fixed parts, names, extra fields and comments.
    bytes: u64,
}

/// Counts the central directory headers anywhere in `zip`. The zip parser tries one end
/// record after another until one parses, reading as many headers as it claims, each at the
/// signature where the previous one ended: so however the end records lie, it parses no more
/// headers, nor header bytes, than the file holds signatures for.
fn central_headers(zip: &mut impl Read) -> std::io::Result<Headers> {
    let mut headers = Headers::default();
    let mut window = Vec::with_capacity(2 * SCAN_CHUNK);
    let mut chunk = vec![0u8; SCAN_CHUNK];
    loop {
        let read = zip.read(&mut chunk)?;
        window.extend_from_slice(&chunk[..read]);
        let at_end = read == 0;
        // A header's fixed part may continue in the next chunk: look at it then.
        let complete = if at_end { window.len() } else { window.len().saturating_sub(HEADER_FIXED - 1) };
        for at in 0..complete {
            if window[at] == HEADER_SIGNATURE[0] && window[at..].starts_with(HEADER_SIGNATURE) {
                headers.entries += 1;
                headers.bytes += header_bytes(&window[at..]);
            }
        }
        if at_end {
            return Ok(headers);
        }
        window.drain(..complete);
    }
}

const SCAN_CHUNK: usize = 1 << 20;

/// The bytes of the central directory header at the start of `header`, as its lengths say
/// (its fixed part alone if the file ends within it).
fn header_bytes(header: &[u8]) -> u64 {
    let length =
        |at: usize| header.get(at..at + 2).map_or(0, |b| u64::from(u16::from_le_bytes([b[0], b[1]])));
    HEADER_FIXED as u64 + length(28) + length(30) + length(32)
}

/// Why a zip of these central directory headers is left to the go command unparsed, if it is.
fn refusal(headers: &Headers, task_share: u64) -> Option<String> {
    // Each entry the agent extracts is a file of a block at least.
    if headers.entries.saturating_mul(BLOCK) > task_share {
        return Some(format!(
            "its {} entries take more than the {task_share} bytes one task may have the agent extract",
            headers.entries
        ));
    }
    (headers.bytes > MAX_DIRECTORY).then(|| {
        format!(
            "its central directory takes {} bytes, more than the {MAX_DIRECTORY} the agent reads",
            headers.bytes
        )
    })
}

/// What disk an extraction of files of these sizes, in these directories, takes at least.
pub(super) fn charge(sizes: impl Iterator<Item = u64>, directories: usize) -> u64 {
    let files: u64 = sizes.map(crate::taskdir::file_cost).sum();
    files + directories as u64 * BLOCK
}

/// The module path or version a proxy and a module cache spell with `!x` for each capital X.
pub(super) fn unescape(escaped: &str) -> Option<String> {
    let mut out = String::with_capacity(escaped.len());
    let mut bang = false;
    for c in escaped.chars() {
        if bang {
            if !c.is_ascii_lowercase() {
                return None;
            }
            out.push(c.to_ascii_uppercase());
            bang = false;
        } else if c == '!' {
            bang = true;
        } else if c.is_ascii_uppercase() {
            return None;
        } else {
            out.push(c);
        }
    }
    (!bang).then_some(out)
}

/// What a zip holds, as far as extracting it goes.
#[derive(Debug)]
pub(super) struct Contents {
    /// Each file's name in the zip and its path in the module directory, in the zip's order.
    pub(super) names: Vec<(String, String)>,
    /// Each file's size as the zip declares it, in the same order.
    pub(super) sizes: Vec<u64>,
    /// What extracting it takes on disk, at least (see [`charge`]).
    pub(super) charge: u64,
}

pub(super) enum Inspection {
    Extractable(Contents),
    LeftToGo(String),
}

/// Reads the names and declared sizes of the module zip `zip` (every name under `prefix`),
/// writing nothing: whether the agent extracts it as the go command would, and what that takes.
/// A zip whose central directory no task's share (`task_share`) could extract, or too large to
/// parse, is left to the go command before it is parsed.
pub(super) fn inspect(zip: &Path, prefix: &str, task_share: u64) -> Result<Inspection, String> {
    let failed = |err: std::io::Error| format!("{}: {err}", zip.display());
    let file = std::fs::File::open(zip).map_err(failed)?;
    if file.metadata().map_err(failed)?.len() > MAX_ZIP {
        return Ok(Inspection::LeftToGo("the zip is over 500 MiB, which the go command refuses".into()));
    }
    let headers = central_headers(&mut &file).map_err(failed)?;
    if let Some(why) = refusal(&headers, task_share) {
        return Ok(Inspection::LeftToGo(why));
    }
    let mut archive = match zip::ZipArchive::new(file) {
        Ok(archive) => archive,
        Err(err) => return Ok(Inspection::LeftToGo(format!("not a zip the agent reads: {err}"))),
    };
    let mut names = Vec::with_capacity(archive.len());
    let mut sizes = Vec::with_capacity(archive.len());
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(|err| err.to_string())?;
        let Ok(name) = std::str::from_utf8(entry.name_raw()) else {
            return Ok(Inspection::LeftToGo("a name is not UTF-8".into()));
        };
        if entry.is_dir() || entry.is_symlink() {
            return Ok(Inspection::LeftToGo(format!("{name:?} is not a regular file")));
        }
        let Some(relative) = name.strip_prefix(prefix) else {
            return Ok(Inspection::LeftToGo(format!("{name:?} is outside {prefix}")));
        };
        if let Err(why) = check_file_path(relative) {
            return Ok(Inspection::LeftToGo(format!("{name:?}: {why}")));
        }
        sizes.push(entry.size());
        names.push((name.to_owned(), relative.to_owned()));
    }
    let mut folded = HashSet::new();
    if let Some((name, _)) = names.iter().find(|(name, _)| !folded.insert(name.to_lowercase())) {
        return Ok(Inspection::LeftToGo(format!("{name:?} differs from another name only in case")));
    }
    let declared = sizes.iter().try_fold(0u64, |sum, size| sum.checked_add(*size));
    if declared.is_none_or(|declared| declared > MAX_EXTRACTED) {
        return Ok(Inspection::LeftToGo("more than 500 MiB extracted".into()));
    }
    let directories: HashSet<&str> =
        names.iter().filter_map(|(_, relative)| relative.rsplit_once('/').map(|(dir, _)| dir)).collect();
    let charge = charge(sizes.iter().copied(), directories.len() + 1);
    Ok(Inspection::Extractable(Contents { names, sizes, charge }))
}

/// Extracts the files of `contents` from `zip` into `dest` (new), files 0444, and returns the
/// zip's `h1:` hash as the go command computes it (SHA-256 over the sorted lines
/// `<SHA-256 of the file>  <name>`); `None` as soon as a file holds more than the zip declares
/// (the go command refuses such a zip too). Gives up (an error, for the caller to clear)
/// between files once `stopped` says so.
pub(super) fn write_out(
    zip: &Path,
    contents: &Contents,
    dest: &Path,
    stopped: &dyn Fn() -> bool,
) -> Result<Option<String>, String> {
    let file = std::fs::File::open(zip).map_err(|err| format!("{}: {err}", zip.display()))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|err| format!("{}: {err}", zip.display()))?;
    std::fs::create_dir(dest).map_err(|err| format!("{}: {err}", dest.display()))?;
    let mut lines = Vec::with_capacity(contents.names.len());
    let mut buffer = vec![0u8; 64 << 10];
    for (index, ((name, relative), declared)) in contents.names.iter().zip(&contents.sizes).enumerate() {
        if stopped() {
            return Err(format!("{}: stopped, the task was aborted", zip.display()));
        }
        let mut entry = archive.by_index(index).map_err(|err| format!("{name}: {err}"))?;
        let target = dest.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|err| format!("{}: {err}", parent.display()))?;
        }
        let mut out =
            std::fs::File::create_new(&target).map_err(|err| format!("{}: {err}", target.display()))?;
        let mut hasher = Sha256::new();
        let mut limited = (&mut entry).take(declared + 1);
        let mut size = 0u64;
        loop {
            let read = limited.read(&mut buffer).map_err(|err| format!("{name}: {err}"))?;
            if read == 0 {
                break;
            }
            size += read as u64;
            if size > *declared {
                return Ok(None);
            }
            hasher.update(&buffer[..read]);
            out.write_all(&buffer[..read]).map_err(|err| format!("{}: {err}", target.display()))?;
        }
        out.set_permissions(std::fs::Permissions::from_mode(0o444))
            .map_err(|err| format!("{}: {err}", target.display()))?;
        lines.push(format!("{:x}  {name}\n", hasher.finalize()));
    }
    lines.sort_by(|a, b| line_name(a).cmp(line_name(b)));
    let summary = Sha256::digest(lines.concat().as_bytes());
    Ok(Some(format!("h1:{}", base64::engine::general_purpose::STANDARD.encode(summary))))
}

/// A task's share in these tests: every zip of them fits.
#[cfg(test)]
const TASK_SHARE: u64 = 1 << 30;

/// Inspects and extracts `zip` into `dest`, as the store does.
#[cfg(test)]
fn extract(zip: &Path, prefix: &str, dest: &Path) -> Result<Option<(Contents, String)>, String> {
    match inspect(zip, prefix, TASK_SHARE)? {
        Inspection::Extractable(contents) => {
            Ok(write_out(zip, &contents, dest, &|| false)?.map(|hash| (contents, hash)))
        }
        Inspection::LeftToGo(_) => Ok(None),
    }
}

/// The name a hash line is of (after the 64 hex digits and two spaces).
fn line_name(line: &str) -> &str {
    &line[66..]
}

/// Names the go command extracts as they are (golang.org/x/mod/module.CheckFilePath, and what
/// a module zip may not hold): anything else is left to it.
fn check_file_path(path: &str) -> Result<(), String> {
    let elements: Vec<&str> = path.split('/').collect();
    for element in &elements {
        if element.is_empty() || *element == "." || *element == ".." {
            return Err("an empty, `.` or `..` path element".into());
        }
        if !element.chars().all(|c| c.is_ascii_alphanumeric() || "-._~+@,=#%&()[]{}^!$' ".contains(c)) {
            return Err("a character the agent does not extract".into());
        }
        let stem = element.split('.').next().unwrap_or_default().to_ascii_lowercase();
        let reserved = ["con", "prn", "aux", "nul"].contains(&stem.as_str())
            || (stem.len() == 4
                && (stem.starts_with("com") || stem.starts_with("lpt"))
                && stem.ends_with(|c: char| c.is_ascii_digit()));
        if reserved {
            return Err("a name Windows reserves".into());
        }
    }
    if is_vendored_package(path) {
        return Err("a file of a vendored package".into());
    }
    if elements.len() > 1 && elements.last() == Some(&"go.mod") {
        return Err("a nested module".into());
    }
    Ok(())
}

/// A file below a directory of a `vendor` directory, which module zips never hold (a file
/// directly in one, like `vendor/modules.txt`, they may).
fn is_vendored_package(path: &str) -> bool {
    let rest = match path.strip_prefix("vendor/") {
        Some(rest) => rest,
        None => match path.find("/vendor/") {
            Some(at) => &path[at + "/vendor/".len()..],
            None => return false,
        },
    };
    rest.contains('/')
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn module_paths_unescape_as_the_module_cache_spells_them() {
        assert_eq!(unescape("github.com/!x"), Some("github.com/X".into()));
        for bad in ["a/B", "a/!", "a/!1"] {
            assert_eq!(unescape(bad), None, "{bad}");
        }
    }

    #[test]
    fn unusual_names_are_left_to_the_go_command() {
        for fine in [
            "go.mod",
            "a/b.go",
            ".gitignore",
            "testdata/x_y-z.txt",
            "LICENSE",
            "vendor/modules.txt",
            "comb.go",
            "lpt.go",
        ] {
            assert!(check_file_path(fine).is_ok(), "{fine}");
        }
        for odd in [
            "",
            "a//b",
            "../x",
            "a/./b",
            "a/..",
            "con.go",
            "a/LPT1",
            "vendor/x/y.go",
            "sub/go.mod",
            "a\\b",
            "tab\t",
        ] {
            assert!(check_file_path(odd).is_err(), "{odd}");
        }
    }

    pub(in crate::modules) fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
        let mut writer = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        for (name, content) in entries {
            let options = zip::write::SimpleFileOptions::default();
            writer.start_file(*name, options).unwrap();
            writer.write_all(content).unwrap();
        }
        writer.finish().unwrap();
    }

    const PREFIX: &str = "example.com/m@v1.0.0/";

    /// A zip of `count` empty files.
    fn write_empty_files(path: &Path, count: usize) {
        let names: Vec<String> = (0..count).map(|i| format!("{PREFIX}{i}")).collect();
        let entries: Vec<(&str, &[u8])> = names.iter().map(|name| (name.as_str(), &b""[..])).collect();
        write_zip(path, &entries);
    }

    fn left_to_go(inspection: Inspection) -> String {
        match inspection {
            Inspection::LeftToGo(why) => why,
            Inspection::Extractable(contents) => panic!("extractable: {} files", contents.names.len()),
        }
    }

    /// Parsing a central directory takes memory for every entry: a small zip of millions of
    /// empty entries would take gigabytes. Each file takes a block once extracted, so a zip of
    /// more entries than a task's share has blocks for is refused unparsed.
    #[test]
    fn a_zip_of_more_entries_than_the_share_has_blocks_for_is_refused_unparsed() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("many.zip");
        write_empty_files(&zip, 300);
        let why = left_to_go(inspect(&zip, PREFIX, 256 * BLOCK).unwrap());
        assert!(why.contains("300 entries"), "{why}");
        let Inspection::Extractable(contents) = inspect(&zip, PREFIX, 301 * BLOCK).unwrap() else {
            panic!("a zip within the share was refused")
        };
        assert_eq!(contents.names.len(), 300);
    }

    #[test]
    fn the_central_directory_is_measured_from_its_headers_alone() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("m.zip");
        write_zip(
            &zip,
            &[
                (&format!("{PREFIX}go.mod"), b"module example.com/m\n"),
                (&format!("{PREFIX}a.go"), b"package m\n"),
            ],
        );
        let headers = central_headers(&mut std::fs::File::open(&zip).unwrap()).unwrap();
        assert_eq!(headers.entries, 2);
        let names = format!("{PREFIX}go.mod{PREFIX}a.go").len() as u64;
        assert!(headers.bytes >= 2 * 46 + names, "{headers:?}");
        assert!(refusal(&headers, u64::MAX).is_none());
        let huge = Headers { entries: 2, bytes: MAX_DIRECTORY + 1 };
        assert!(refusal(&huge, u64::MAX).is_some_and(|why| why.contains("central directory")));
    }

    /// The go command refuses module zips over 500 MiB: the agent leaves them to it unread.
    #[test]
    fn a_zip_over_500_mib_is_left_to_the_go_command_unread() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("huge.zip");
        std::fs::File::create(&zip).unwrap().set_len(MAX_ZIP + 1).unwrap();
        let why = left_to_go(inspect(&zip, PREFIX, TASK_SHARE).unwrap());
        assert!(why.contains("500 MiB"), "{why}");
    }

    #[test]
    fn a_zip_is_extracted_read_only_with_the_go_commands_hash() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("m.zip");
        write_zip(
            &zip,
            &[
                ("example.com/m@v1.0.0/go.mod", b"module example.com/m\n"),
                ("example.com/m@v1.0.0/m.go", b"package m\n"),
            ],
        );
        let dest = dir.path().join("out");
        let (contents, hash) = extract(&zip, "example.com/m@v1.0.0/", &dest).unwrap().expect("left to go");
        let files: Vec<&str> = contents.names.iter().map(|(_, relative)| relative.as_str()).collect();
        assert_eq!(files, ["go.mod", "m.go"]);
        assert_eq!(contents.sizes, [21, 10]);
        assert_eq!(contents.charge, 3 * BLOCK, "two files of a block each, in one directory");
        assert_eq!(std::fs::read(dest.join("m.go")).unwrap(), b"package m\n");
        assert_eq!(std::fs::metadata(dest.join("m.go")).unwrap().permissions().mode() & 0o777, 0o444);
        // dirhash.Hash1's formula written out; that the go command agrees is checked end to end
        // (tests/tests/remote.rs: it verifies the hash against go.sum before building).
        let lines = format!(
            "{:x}  example.com/m@v1.0.0/go.mod\n{:x}  example.com/m@v1.0.0/m.go\n",
            Sha256::digest(b"module example.com/m\n"),
            Sha256::digest(b"package m\n")
        );
        let expected = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(lines.as_bytes()));
        assert_eq!(hash, format!("h1:{expected}"));
    }

    #[test]
    fn zips_the_agent_would_extract_differently_are_left_to_the_go_command() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [&[(&str, &[u8])]; 3] = [
            &[("example.com/m@v1.0.0/a.go", b"a"), ("elsewhere/b.go", b"b")],
            &[("example.com/m@v1.0.0/A.go", b"a"), ("example.com/m@v1.0.0/a.go", b"b")],
            &[("example.com/m@v1.0.0/../../escape", b"x")],
        ];
        for (index, entries) in cases.iter().enumerate() {
            let zip = dir.path().join(format!("{index}.zip"));
            write_zip(&zip, entries);
            let dest = dir.path().join(format!("out{index}"));
            let outcome = extract(&zip, "example.com/m@v1.0.0/", &dest).unwrap();
            assert!(outcome.is_none(), "case {index}");
            assert!(!dest.exists(), "case {index} wrote files");
        }
    }
}
