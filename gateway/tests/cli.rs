//! The `baton-gateway` command line: help, and clear errors for bad configuration.

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton-gateway"))
}

#[test]
fn help_explains_and_bad_configuration_is_refused_clearly() {
    let help = gateway().arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in ["--token-key-file", "--dev-tls", "--server", "--max-connections", "--resume-grace-s"] {
        assert!(text.contains(needle), "--help should mention {needle}");
    }

    let directory = std::env::temp_dir().join(format!("baton-gateway-cli-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let short_key = directory.join("short.key");
    std::fs::write(&short_key, "too short").unwrap();
    let run = |args: &[&str]| {
        let output = gateway().args(args).output().unwrap();
        assert!(!output.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let missing =
        run(&["--name", "g", "--certs", "/nonexistent", "--token-key-file", "/nonexistent/key", "--dev-tls", "/tmp"]);
    assert!(missing.contains("reading the token key"), "{missing}");
    let short = run(&[
        "--name",
        "g",
        "--certs",
        "/nonexistent",
        "--token-key-file",
        short_key.to_str().unwrap(),
        "--dev-tls",
        "/tmp",
    ]);
    assert!(short.contains("at least 32 bytes"), "{short}");
    let no_tls = run(&["--name", "g", "--certs", "/nonexistent", "--token-key-file", short_key.to_str().unwrap()]);
    assert!(no_tls.contains("32 bytes") || no_tls.contains("--dev-tls"), "{no_tls}");
    let idle = run(&["--name", "g", "--certs", "/x", "--token-key-file", "/x", "--idle-timeout-s", "0"]);
    assert!(idle.contains("--idle-timeout-s"), "{idle}");
    let _ = std::fs::remove_dir_all(directory);
}
