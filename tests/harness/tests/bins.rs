//! The harness's own binaries, run as an operator or CI would run them. Living in this package
//! makes `cargo test` build them (`CARGO_BIN_EXE_*`), so the process tests elsewhere find them too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn logs_can_be_json_lines() {
    // With BATON_LOG_FORMAT=json every log line is a JSON object (here: the ticks, at trace).
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_headless"))
        .args(["--seconds", "0.2", "--objects", "10", "--avatars", "2", "--npcs", "2", "--plants", "2", "--json"])
        .env("RUST_LOG", "baton_sdk=trace")
        .env("BATON_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "nothing was logged");
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(value.get("level").is_some() && value.get("fields").is_some(), "{value}");
    }
}
