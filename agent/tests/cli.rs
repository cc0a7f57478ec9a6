//! The `baton-agent` command line: help, and clear errors for bad configuration.

use std::process::Command;

#[test]
fn help_explains_and_bad_configuration_is_refused() {
    let help = Command::new(env!("CARGO_BIN_EXE_baton-agent")).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in ["--host", "--coordinator", "--pool", "--capacity", "--server-ip", "COMMAND"] {
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
    // Region servers must listen where other hosts can dial them.
    let output = Command::new(env!("CARGO_BIN_EXE_baton-agent"))
        .args(["--host", "h", "--certs", "/nonexistent", "--coordinator", "127.0.0.1:1", "--server-ip", "0.0.0.0"])
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--server-ip must be an address other hosts can dial"), "{stderr}");
}

#[test]
fn settings_come_from_a_file_and_the_environment_and_typos_are_refused() {
    let directory = std::env::temp_dir().join(format!("baton-agent-settings-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let file = directory.join("agent.toml");
    // A complete configuration in the file: the agent gets as far as loading the certificate.
    std::fs::write(
        &file,
        "host = \"h7\"\ncerts = \"/nonexistent/certs\"\ncoordinator = \"127.0.0.1:1\"\npool = 1\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_baton-agent")).arg("--config").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("loading the cluster certificate of h7 from /nonexistent/certs"), "{stderr}");
    // The environment overrides the file, and is validated like an option.
    let output = Command::new(env!("CARGO_BIN_EXE_baton-agent"))
        .arg("--config")
        .arg(&file)
        .env("BATON_AGENT_POOL", "lots")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("lots") && stderr.contains("--pool"), "{stderr}");
    // A typo in the file is named, with the file.
    std::fs::write(&file, "host = \"h7\"\npoool = 1\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_baton-agent")).arg("--config").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown setting `poool`") && stderr.contains("agent.toml"), "{stderr}");
    let _ = std::fs::remove_dir_all(&directory);
}
