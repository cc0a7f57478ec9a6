//! The `baton-coordinator` command line: help, and clear errors for bad configuration.

use std::process::Command;

#[test]
fn help_explains_and_missing_certificates_are_reported() {
    let help = Command::new(env!("CARGO_BIN_EXE_baton-coordinator")).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in ["--data", "--certs", "--listen", "--control"] {
        assert!(text.contains(needle), "--help should mention {needle}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_baton-coordinator"))
        .args(["--certs", "/nonexistent/certs", "--data", "/tmp/baton-coordinator-cli-test"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loading the cluster certificate"), "{stderr}");
}
