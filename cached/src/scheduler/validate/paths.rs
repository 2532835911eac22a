//! Paths and package patterns a job names: `module_dir`, the packages to build, `-coverpkg` and
//! the `pattern=` prefix of per-package flags. They stay inside the source tree (the agent
//! checks them again after resolving links) and are words go reads as patterns, never flags.

/// Bytes in one path or package pattern.
pub(super) const MAX_PATTERN: usize = 1024;

/// A relative, `/`-separated path that does not climb out of the tree.
pub(super) fn check_relative(what: &str, path: &str) -> Result<(), String> {
    if path.len() > MAX_PATTERN {
        return Err(format!("{what} is {} bytes long; at most {MAX_PATTERN}", path.len()));
    }
    if path.starts_with('/') || path.split('/').any(|part| part == "..") {
        return Err(format!("{what} {path:?} must be a relative path inside the source tree"));
    }
    Ok(())
}

/// Characters of import paths (golang.org/x/mod/module's import path rules, plus `+`) and of
/// directory names in relative patterns; `...` is made of dots.
fn is_pattern_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '/' | '+') || c.is_alphanumeric()
}

/// A package pattern as go build takes it: `./cmd/app`, `./...`, `example.com/x/...`, `all`.
pub(super) fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("a package pattern is empty".to_owned());
    }
    if pattern.starts_with('-') {
        return Err(format!("{pattern:?} is not a package pattern (go would read it as a flag)"));
    }
    if let Some(bad) = pattern.chars().find(|&c| !is_pattern_char(c)) {
        return Err(format!(
            "package pattern {pattern:?} holds {bad:?}; patterns are import paths or ./relative/dirs \
             made of letters, digits and - . _ ~ / +"
        ));
    }
    check_relative("package pattern", pattern.trim_start_matches("./"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        for good in
            [".", "./...", "./cmd/app", "all", "std", "example.com/x/...", "gopkg.in/yaml.v3", "./día"]
        {
            check_pattern(good).unwrap();
        }
        for bad in
            ["", "-toolexec=x", "/etc", "../x", "./a/../../x", "a b", "a\\b", "a@v1", "a;b", "'a'", "x\0"]
        {
            assert!(check_pattern(bad).is_err(), "{bad:?}");
        }
        assert!(check_pattern(&"a".repeat(MAX_PATTERN + 1)).unwrap_err().contains("at most"));
        check_relative("module_dir", "").unwrap();
        check_relative("module_dir", "sub/mod").unwrap();
        assert!(check_relative("module_dir", "sub/../..").is_err());
    }
}
