//! The `sample-region-server` command line: help, clear errors for bad settings, and a served
//! process that answers a bad serve-protocol line with an `error` event instead of dying.
//!
//! (Being an integration test of this package also makes cargo build its binary for the
//! process-level tests in `tests/`, which find it next to their own executable.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sample-region-server"))
}

#[test]
fn help_explains_and_bad_settings_are_refused_clearly() {
    let help = server().arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in
        ["--serve", "--coordinator", "--authority", "--checkpoint-dir", "--tick-rate", "--config", "--bulk-congestion"]
    {
        assert!(text.contains(needle), "--help should mention {needle}");
    }
    let refused = |args: &[&str], expected: &str| {
        let output = server().args(args).output().unwrap();
        assert!(!output.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    };
    refused(&["--serve"], "needs --name");
    refused(&["--serve", "--name", "a"], "needs --certs");
    refused(&["--serve", "--name", "a", "--certs", "/nonexistent", "--tick-rate", "0"], "--tick-rate");
    refused(&["--serve", "--name", "a", "--certs", "/nonexistent", "--bulk-target-ms", "0"], "--bulk-target-ms");
    refused(&["--serve", "--name", "a", "--certs", "/nonexistent", "--max-freeze-ms", "0"], "--max-freeze-ms");
    refused(&["--serve", "--name", "a", "--bulk-congestion", "reno"], "ledbat");
    let long = "x".repeat(baton_wire::authority::MAX_OWNER_BYTES + 1);
    refused(&["--serve", "--name", &long, "--certs", "/nonexistent"], "--name: the authority cannot keep owner name");
    refused(&["--serve", "--name", "two\nlines", "--certs", "/nonexistent"], "one non-empty line");
    refused(&[], "give --serve");
}

#[test]
fn a_served_process_answers_bad_lines_with_errors_and_keeps_serving() {
    let directory = std::env::temp_dir().join(format!("baton-server-cli-{}", std::process::id()));
    let certs = directory.join("certs");
    let ca = baton_net::DevCa::open_or_create(&certs).unwrap();
    ca.issue("a").unwrap();
    let mut child = server()
        .args(["--serve", "--name", "a", "--certs"])
        .arg(&certs)
        .arg("--authority")
        .arg(directory.join("authority"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The next event but the heap reports (every second, at any point).
    let mut next = || loop {
        let event = baton_wire::serve::parse_event(&lines.next().unwrap().unwrap()).unwrap();
        if !matches!(event, baton_wire::serve::ServerEvent::Heap { .. }) {
            break event;
        }
    };
    assert!(matches!(
        next(),
        baton_wire::serve::ServerEvent::Listening { version: baton_wire::serve::SERVE_VERSION, .. }
    ));
    for bad in [r#"{"cmd":"migrate","region":1}"#, "not json", r#"{"cmd":"prepare","region":-1}"#] {
        writeln!(stdin, "{bad}").unwrap();
        assert!(matches!(next(), baton_wire::serve::ServerEvent::Error { region: None, .. }), "{bad}");
    }
    // A game key the sample does not know is the game's refusal, naming the region.
    writeln!(stdin, r#"{{"cmd":"host","region":3,"world":{{"crates":1}}}}"#).unwrap();
    assert!(matches!(
        next(),
        baton_wire::serve::ServerEvent::Error { region: Some(baton_wire::RegionId(3)), error } if error.contains("crates")
    ));
    writeln!(stdin, r#"{{"cmd":"host","region":3,"world":{{"objects":5}}}}"#).unwrap();
    assert!(matches!(next(), baton_wire::serve::ServerEvent::Owning { region: baton_wire::RegionId(3), .. }));
    writeln!(stdin, r#"{{"cmd":"quit"}}"#).unwrap();
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&directory);
}
