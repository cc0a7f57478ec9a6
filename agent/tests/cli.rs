//! The `baton-agent` command line: help, and clear errors for bad configuration.

use std::process::Command;

#[test]
fn help_explains_and_bad_configuration_is_refused() {
    let help = Command::new(env!("CARGO_BIN_EXE_baton-agent")).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in ["--host", "--coordinator", "--pool", "--capacity", "COMMAND"] {
        assert!(text.contains(needle), "--help should mention {needle}");
    }
    let missing_command = Command::new(env!("CARGO_BIN_EXE_baton-agent"))
        .args(["--host", "h", "--certs", "/nonexistent", "--coordinator", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!missing_command.status.success());
    let output = Command::new(env!("CARGO_BIN_EXE_baton-agent"))
        .args(["--host", "h", "--certs", "/nonexistent", "--coordinator", "127.0.0.1:1", "--", "true"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loading the cluster certificate"), "{stderr}");
}
