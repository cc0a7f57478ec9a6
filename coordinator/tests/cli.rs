//! The `baton-coordinator` command line: help, and clear errors for bad configuration.

use std::process::Command;

#[test]
fn help_explains_and_missing_certificates_are_reported() {
    let help = Command::new(env!("CARGO_BIN_EXE_baton-coordinator")).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in ["--data", "--certs", "--listen", "--control", "--api-listen", "--api-token-file"] {
        assert!(text.contains(needle), "--help should mention {needle}");
    }
    let directory = std::env::temp_dir().join(format!("baton-coordinator-cli-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let run = |token: &str| {
        let token_file = directory.join("token");
        std::fs::write(&token_file, token).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_baton-coordinator"))
            .args(["--certs", "/nonexistent/certs", "--data"])
            .arg(directory.join("data"))
            .arg("--api-token-file")
            .arg(&token_file)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let short = run("short");
    assert!(short.contains("at least 16 characters"), "{short}");
    let missing = run("a-long-enough-token-for-the-api");
    assert!(missing.contains("loading the cluster certificate"), "{missing}");
    let _ = std::fs::remove_dir_all(directory);
}
