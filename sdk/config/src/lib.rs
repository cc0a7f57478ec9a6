//! Settings for Baton's binaries from a file and the environment, checked by the command line's
//! own parser.
//!
//! Every binary keeps one definition of its settings: its clap command. This crate reads a TOML
//! file (`--config FILE`, or the `<PREFIX>_CONFIG` variable) and `<PREFIX>_<KEY>` environment
//! variables with the `config` crate and turns them into command-line arguments placed *before*
//! the real ones. So the precedence is file < environment < command line, and every value goes
//! through the same validation and gets the same error messages as if it had been typed. Keys are
//! the long options without the dashes, with `_` or `-` (`status_interval_ms = 200`); a flag takes
//! `true`/`false`; a repeatable option takes an array; the binary's trailing command (if it has one)
//! takes an array and is used only when none is given on the command line.
//!
//! [`init_logging`] sets up the same logs for every binary (text, or JSON lines).
//!
//! What it does not do: nested tables, or keys that are not options of the binary (both are refused
//! with the file's name, so a typo never goes unnoticed).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Command};

/// How every long-running Baton binary starts and ends: settings from the file and the environment
/// folded into the arguments (a settings error is printed and exits with 2), parsed by `C`
/// (clap prints its own errors and `--help`), logs set up, then `run`; an error from `run` is
/// printed with its causes and exits with 1.
pub fn main<C: clap::Parser, E: std::fmt::Display>(
    name: &str,
    prefix: &str,
    run: impl FnOnce(C) -> Result<(), E>,
) -> std::process::ExitCode {
    let arguments = match arguments(&C::command(), prefix) {
        Ok(arguments) => arguments,
        Err(error) => {
            eprintln!("{name}: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = C::parse_from(arguments);
    init_logging();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Sets up a binary's logs: to standard error, filtered by `RUST_LOG` (default `warn`), as
/// readable text, or as one JSON object per line with `BATON_LOG_FORMAT=json` (for log shippers).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    if std::env::var("BATON_LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file or the environment could not be read or parsed.
    #[error("reading settings{}: {message}", source_name(.file))]
    Read {
        /// The file, if one was given.
        file: Option<PathBuf>,
        /// What went wrong.
        message: String,
    },
    /// A key is not a setting of this program.
    #[error("unknown setting `{key}`{} (see --help for the options)", source_name(.file))]
    Unknown {
        /// The key.
        key: String,
        /// The file, if one was given.
        file: Option<PathBuf>,
    },
    /// A value has the wrong shape for its setting.
    #[error("setting `{key}`{}: {message}", source_name(.file))]
    Value {
        /// The key.
        key: String,
        /// The file, if one was given.
        file: Option<PathBuf>,
        /// What is wrong.
        message: String,
    },
}

fn source_name(file: &Option<PathBuf>) -> String {
    file.as_ref().map(|file| format!(" in {}", file.display())).unwrap_or_else(|| " (environment)".into())
}

/// The process's arguments with the settings file and environment folded in, for
/// `Cli::parse_from`. `command` is the binary's clap command (`Cli::command()`), which must have a
/// `--config FILE` option; `prefix` names its variables (`BATON_AGENT` reads `BATON_AGENT_POOL`).
pub fn arguments(command: &Command, prefix: &str) -> Result<Vec<OsString>, SettingsError> {
    arguments_from(command, prefix, std::env::args_os().collect(), std::env::vars_os().collect())
}

/// [`arguments`] over given arguments and environment (for tests).
pub fn arguments_from(
    command: &Command,
    prefix: &str,
    arguments: Vec<OsString>,
    environment: Vec<(OsString, OsString)>,
) -> Result<Vec<OsString>, SettingsError> {
    let config_variable = format!("{prefix}_CONFIG");
    let mut environment: std::collections::HashMap<String, String> = environment
        .into_iter()
        .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(key, _)| key.starts_with(&format!("{prefix}_")))
        .collect();
    let file = config_file(&arguments).or_else(|| environment.remove(&config_variable).map(PathBuf::from));
    let mut builder = config::Config::builder();
    if let Some(file) = &file {
        builder = builder.add_source(config::File::from(file.as_path()).format(config::FileFormat::Toml));
    }
    let read_error = |file: &Option<PathBuf>, error: config::ConfigError| SettingsError::Read {
        file: file.clone(),
        message: error.to_string(),
    };
    let from_file = builder.build().map_err(|error| read_error(&file, error))?;
    let from_environment = config::Config::builder()
        .add_source(config::Environment::with_prefix(prefix).prefix_separator("_").source(Some(environment)))
        .build()
        .map_err(|error| read_error(&None, error))?;

    let mut folded = vec![arguments.first().cloned().unwrap_or_else(|| OsString::from(command.get_name()))];
    let mut trailing: Option<Vec<OsString>> = None;
    for (settings, origin) in [(from_file, file.clone()), (from_environment, None)] {
        let table = settings
            .try_deserialize::<config::Map<String, config::Value>>()
            .map_err(|error| SettingsError::Read { file: origin.clone(), message: error.to_string() })?;
        let mut keys: Vec<_> = table.into_iter().collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in keys {
            fold(command, &key, value, &origin, &mut folded, &mut trailing)?;
        }
    }
    let real = arguments.iter().skip(1).cloned();
    let has_trailing = arguments.iter().any(|argument| argument == "--");
    folded.extend(real);
    if let Some(trailing) = trailing
        && !has_trailing
    {
        folded.push(OsString::from("--"));
        folded.extend(trailing);
    }
    Ok(folded)
}

/// The value of `--config FILE` / `--config=FILE` among the real arguments.
fn config_file(arguments: &[OsString]) -> Option<PathBuf> {
    let mut iter = arguments.iter().skip(1);
    while let Some(argument) = iter.next() {
        if argument == "--" {
            return None;
        }
        if argument == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(value) = argument.to_str().and_then(|text| text.strip_prefix("--config=")) {
            return Some(PathBuf::from(value));
        }
    }
    None
}

fn fold(
    command: &Command,
    key: &str,
    value: config::Value,
    origin: &Option<PathBuf>,
    folded: &mut Vec<OsString>,
    trailing: &mut Option<Vec<OsString>>,
) -> Result<(), SettingsError> {
    let long = key.replace('_', "-");
    let unknown = || SettingsError::Unknown { key: key.to_owned(), file: origin.clone() };
    let wrong = |message: String| SettingsError::Value { key: key.to_owned(), file: origin.clone(), message };
    if matches!(long.as_str(), "config" | "help" | "version") {
        return Err(unknown());
    }
    let argument = command
        .get_arguments()
        .find(|argument| {
            argument.get_long() == Some(long.as_str()) || (argument.is_positional() && argument.get_id() == key)
        })
        .ok_or_else(unknown)?;
    let scalars = |value: config::Value| -> Result<Vec<String>, SettingsError> {
        match value.kind {
            config::ValueKind::Array(items) => items.into_iter().map(|item| scalar(item).map_err(&wrong)).collect(),
            _ => Ok(vec![scalar(value).map_err(&wrong)?]),
        }
    };
    if argument.is_positional() {
        *trailing = Some(scalars(value)?.into_iter().map(OsString::from).collect());
        return Ok(());
    }
    match argument.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => {
            let text = scalar(value).map_err(&wrong)?.to_ascii_lowercase();
            let on = match text.as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                other => return Err(wrong(format!("expected true or false, got {other:?}"))),
            };
            if on == matches!(argument.get_action(), ArgAction::SetTrue) {
                folded.push(OsString::from(format!("--{long}")));
            }
        }
        ArgAction::Append => {
            for item in scalars(value)? {
                folded.push(OsString::from(format!("--{long}")));
                folded.push(OsString::from(item));
            }
        }
        _ => {
            if matches!(value.kind, config::ValueKind::Array(_)) {
                return Err(wrong("takes one value, not a list".into()));
            }
            folded.push(OsString::from(format!("--{long}")));
            folded.push(OsString::from(scalar(value).map_err(&wrong)?));
        }
    }
    Ok(())
}

/// A setting's value as command-line text.
fn scalar(value: config::Value) -> Result<String, String> {
    match value.kind {
        config::ValueKind::String(text) => Ok(text),
        config::ValueKind::Boolean(flag) => Ok(flag.to_string()),
        config::ValueKind::I64(number) => Ok(number.to_string()),
        config::ValueKind::I128(number) => Ok(number.to_string()),
        config::ValueKind::U64(number) => Ok(number.to_string()),
        config::ValueKind::U128(number) => Ok(number.to_string()),
        config::ValueKind::Float(number) => Ok(number.to_string()),
        config::ValueKind::Nil => Err("has no value".into()),
        config::ValueKind::Table(_) => Err("nested tables are not settings".into()),
        config::ValueKind::Array(_) => Err("a list inside a list is not a setting".into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::{Arg, CommandFactory, Parser};

    /// A program shaped like the agent.
    #[derive(Debug, Parser, PartialEq)]
    #[command(args_override_self = true)]
    struct Cli {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 2)]
        pool: usize,
        #[arg(long)]
        control: bool,
        #[arg(long = "server")]
        servers: Vec<String>,
        #[arg(last = true)]
        command: Vec<String>,
    }

    fn parse(file: Option<&str>, environment: &[(&str, &str)], arguments: &[&str]) -> Result<Cli, String> {
        let directory = tempfile::Builder::new().prefix("baton-config-test-").tempdir().unwrap();
        let mut all: Vec<OsString> = vec!["prog".into()];
        if let Some(text) = file {
            let path = directory.path().join(format!("{}.toml", text.len()));
            std::fs::write(&path, text).unwrap();
            all.push("--config".into());
            all.push(path.into());
        }
        all.extend(arguments.iter().map(OsString::from));
        let environment = environment.iter().map(|(key, value)| (OsString::from(key), OsString::from(value))).collect();
        let folded = arguments_from(&Cli::command(), "TEST", all, environment).map_err(|error| error.to_string())?;
        Cli::try_parse_from(folded).map_err(|error| error.to_string())
    }

    #[test]
    fn file_then_environment_then_command_line() {
        let cli = parse(
            Some("host = \"h1\"\npool = 3\ncontrol = true\nserver = [\"a\", \"b\"]\ncommand = [\"srv\", \"--serve\"]"),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!((cli.host.as_str(), cli.pool, cli.control), ("h1", 3, true));
        assert_eq!(cli.servers, ["a", "b"]);
        assert_eq!(cli.command, ["srv", "--serve"]);
        let cli = parse(Some("host = \"h1\"\npool = 3"), &[("TEST_POOL", "5"), ("OTHER_POOL", "9")], &[]).unwrap();
        assert_eq!(cli.pool, 5, "the environment overrides the file");
        let cli = parse(
            Some("host = \"h1\"\npool = 3\ncommand = [\"srv\"]"),
            &[("TEST_POOL", "5")],
            &["--pool", "7", "--", "mine"],
        )
        .unwrap();
        assert_eq!(cli.pool, 7, "the command line overrides both");
        assert_eq!(cli.command, ["mine"], "a command given on the command line wins");
        let cli = parse(None, &[("TEST_HOST", "h9"), ("TEST_CONTROL", "false")], &[]).unwrap();
        assert_eq!((cli.host.as_str(), cli.control), ("h9", false));
    }

    #[test]
    fn bad_settings_are_refused_clearly() {
        let error = parse(Some("host = \"h1\"\npoool = 3"), &[], &[]).unwrap_err();
        assert!(error.contains("unknown setting `poool`") && error.contains(".toml"), "{error}");
        let error = parse(Some("host = \"h1\"\npool = \"many\""), &[], &[]).unwrap_err();
        assert!(error.contains("many") && error.contains("--pool"), "{error}");
        let error = parse(Some("host = \"h1\"\ncontrol = \"maybe\""), &[], &[]).unwrap_err();
        assert!(error.contains("expected true or false"), "{error}");
        let error = parse(Some("host = \"h1\"\npool = [1, 2]"), &[], &[]).unwrap_err();
        assert!(error.contains("not a list"), "{error}");
        let error = parse(Some("host = \"h1\"\n[nested]\nx = 1"), &[], &[]).unwrap_err();
        assert!(error.contains("unknown setting `nested`"), "{error}");
        let error = parse(Some("host = = broken"), &[], &[]).unwrap_err();
        assert!(error.contains("reading settings"), "{error}");
        let error = parse(None, &[("TEST_NOPE", "1")], &["--host", "h"]).unwrap_err();
        assert!(error.contains("unknown setting `nope` (environment)"), "{error}");
        let missing: Vec<OsString> = vec!["prog".into(), "--config".into(), "/nonexistent/baton.toml".into()];
        let error = arguments_from(&Cli::command(), "TEST", missing, Vec::new()).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/baton.toml"), "{error}");
        // A command without the option is still handled (keys map to nothing it knows).
        let bare = Command::new("bare").arg(Arg::new("x").long("x"));
        assert!(arguments_from(&bare, "TEST", vec!["bare".into()], Vec::new()).is_ok());
    }
}
