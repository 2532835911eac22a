//! What the unit tests of several modules share.

use std::path::{Path, PathBuf};

/// Writes `files` (path, contents) under `dir`, making directories as needed.
pub(crate) fn write(dir: &Path, files: &[(&str, &str)]) {
    for (path, contents) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

/// Runs `command` in `dir`; it must succeed.
pub(crate) fn run(dir: &Path, command: &[&str], env: &[(&str, &str)]) {
    let output = std::process::Command::new(command[0])
        .args(&command[1..])
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A module cache holding example.com/dep v1.0.0 as the go command extracts it (the files,
/// the .mod, and the .ziphash it checks go.sum against), and a module in `app` using it.
pub(crate) fn module_cache_and_app(root: &Path) -> (PathBuf, PathBuf) {
    module_cache_and_app_of(root, &[], MAIN_USING_DEP)
}

const MAIN_USING_DEP: &str = "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/dep\"\n)\n\nfunc main() { fmt.Println(dep.Msg()) }\n";

/// [`module_cache_and_app`] with more files in the dependency (under its directory) and
/// another main package.
pub(crate) fn module_cache_and_app_of(
    root: &Path,
    dep_files: &[(&str, &str)],
    main: &str,
) -> (PathBuf, PathBuf) {
    let cache = root.join("modcache");
    let download = "cache/download/example.com/dep/@v";
    write(
        &cache,
        &[
            (&format!("{download}/v1.0.0.mod"), "module example.com/dep\n\ngo 1.21\n"),
            (&format!("{download}/v1.0.0.info"), "{\"Version\":\"v1.0.0\"}\n"),
            ("example.com/dep@v1.0.0/go.mod", "module example.com/dep\n\ngo 1.21\n"),
            ("example.com/dep@v1.0.0/dep.go", "package dep\n\nfunc Msg() string { return \"honest\" }\n"),
        ],
    );
    let dep = cache.join("example.com/dep@v1.0.0");
    write(&dep, dep_files);
    // The checksum go computed when it extracted the module (go mod verify checks it).
    let sum = crate::modverify::dir_hash(&dep, "example.com/dep@v1.0.0").unwrap();
    write(&cache, &[(&format!("{download}/v1.0.0.ziphash"), &format!("{sum}\n"))]);
    let app = root.join("app");
    write(
        &app,
        &[
            ("go.mod", "module example.com/app\n\ngo 1.21\n\nrequire example.com/dep v1.0.0\n"),
            ("main.go", main),
        ],
    );
    let cache_var = cache.to_str().unwrap();
    run(&app, &["go", "mod", "tidy"], &[("GOMODCACHE", cache_var), ("GOPROXY", "off"), ("GOSUMDB", "off")]);
    (cache, app)
}

/// A dependency from the module cache with a cgo package that includes a header beside it
/// (no file of the package go lists, nor hashed by go's action ID).
pub(crate) fn module_cache_with_cgo(root: &Path) -> (PathBuf, PathBuf) {
    let cgo_package = "package c\n\n// #include \"../inc/value.h\"\nimport \"C\"\n\nfunc Value() int { return int(C.VALUE) }\n";
    let main = "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/dep/c\"\n)\n\nfunc main() { fmt.Println(c.Value()) }\n";
    let files = [("c/c.go", cgo_package), ("inc/value.h", "#define VALUE 1\n")];
    module_cache_and_app_of(root, &files, main)
}
