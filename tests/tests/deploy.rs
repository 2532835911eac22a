//! deploy/: the systemd units are what systemd accepts, every key known to it and every
//! command present (systemd-analyze verify, with the units pointing at the built binaries).

use std::path::Path;
use std::process::Command;

use cached_e2e::binary;

/// A unit as shipped, with its binary at the path this build put it.
fn install(unit: &str, dir: &Path) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd").join(unit);
    let mut text = std::fs::read_to_string(&shipped).expect("the shipped unit");
    for program in ["cached", "runner-agent"] {
        text =
            text.replace(&format!("/usr/local/bin/{program} "), &format!("{} ", binary(program).display()));
    }
    // Verifying loads the environment file; the shipped one is the operator's to write.
    text = text.replace("EnvironmentFile=/etc/", "EnvironmentFile=-/etc/");
    let name = unit.replace("@.", "@test.");
    std::fs::write(dir.join(name), text).expect("unit copy");
}

#[test]
fn the_systemd_units_verify_without_a_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    install("cached.service", dir.path());
    install("runner-agent@.service", dir.path());
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("cached.service"))
        .arg(dir.path().join("runner-agent@test.service"))
        .output()
        .expect("systemd-analyze (scripts/setup installs systemd)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify failed: {stderr}");
    // Unknown or misspelt keys are only warnings to systemd, which then ignores them.
    assert!(stderr.trim().is_empty(), "systemd-analyze verify warned: {stderr}");
}
