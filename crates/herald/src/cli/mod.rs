//! The `herald` command line.

/// `println!` for command output. When the reader has gone away (`herald … | head`), the rest
/// of the output is dropped instead of panicking on the broken pipe (see [`write_line`]).
macro_rules! out {
    () => {
        $crate::cli::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_line(format_args!($($arg)*))
    };
}

/// `eprintln!` for messages beside a command's output (progress, hints, warnings), which does
/// not panic when standard error is closed.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::cli::write_note(format_args!($($arg)*))
    };
}

mod backup;
mod bench;
mod client;
pub use client::{CommandLineRefused, TryLater};
mod copy;
mod listen;
mod serve;

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{MigrateSettings, Settings};

/// Herald: webhook delivery for identity and access events.
///
/// Producers post events to Herald; Herald stores them durably, fans them out to every
/// subscribed webhook, signs each request, delivers it, retries on schedule and keeps every
/// attempt.
#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version = crate::BUILD,
    after_help = "Exit status: 0 when done; 75 when the server could not be reached, or answered \
                  that it cannot take the request now (408, 429, 502, 503, 504): send it again \
                  later (events with the same ids); 2 when the command line itself is refused (an \
                  unknown flag, a value it cannot take, a --yes left out); 1 for anything else (the message says \
                  what to fix)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line and the environment, or exits with clap's message. A value
    /// refused from a `HERALD_…` variable is said to come from it: clap names only the flag,
    /// which someone who set the variable never typed.
    pub fn parse_or_exit() -> Self {
        match Self::try_parse() {
            Ok(cli) => cli,
            Err(mut e) => {
                if let Some(var) = refused_from_environment(&e, std::env::args_os()) {
                    let tip = format!(
                        "the value came from the environment variable {var}: correct it, or \
                         unset it for the default"
                    );
                    e.insert(
                        ContextKind::Suggested,
                        ContextValue::StyledStrs(vec![tip.into()]),
                    );
                }
                if let Some(tip) = client_flag_before_command(&e, std::env::args_os().skip(1)) {
                    e.insert(
                        ContextKind::Suggested,
                        ContextValue::StyledStrs(vec![tip.into()]),
                    );
                }
                if let Some(object) = json_error(&e, std::env::args_os()) {
                    out!("{object}");
                }
                e.exit()
            }
        }
    }
}

/// The client's own flags (`--json`, `--server`, `--token`) belong to the command that talks
/// to a server, after its name: `herald --json orgs list` is refused as an unknown argument
/// of `herald` itself, which says nothing of where it goes. The tip gives the command line
/// (`args`, without the program's name) with every such flag moved to its end; the value of
/// `--server` or `--token` is shown as `…`, never repeated (a token is a secret).
fn client_flag_before_command(
    e: &clap::Error,
    args: impl IntoIterator<Item = OsString>,
) -> Option<String> {
    const CLIENT_FLAGS: [&str; 3] = ["--json", "--server", "--token"];
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = arg.split('=').next()?;
    if !CLIENT_FLAGS.contains(&flag) {
        return None;
    }
    let (mut rest, mut moved) = (Vec::new(), Vec::new());
    let mut args = args.into_iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = args.next() {
        let name = a.split('=').next().unwrap_or_default();
        let Some(client) = CLIENT_FLAGS.iter().find(|f| **f == name) else {
            rest.push(a);
            continue;
        };
        let shown = if *client == "--json" {
            client.to_string()
        } else {
            if a == *client {
                // Its value, given apart.
                args.next();
            }
            format!("{client} …")
        };
        if !moved.contains(&shown) {
            moved.push(shown);
        }
    }
    rest.extend(moved);
    Some(format!(
        "{flag} goes after the command: `herald {}`",
        rest.join(" ")
    ))
}

/// With `--json` on the command line, a usage error as the error object a refused request
/// prints (code `cli`), so that a script reading standard output gets one whoever refused
/// the command; its words, with the usage, still go to standard error.
fn json_error(e: &clap::Error, args: impl IntoIterator<Item = OsString>) -> Option<String> {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        return None;
    }
    let json = args
        .into_iter()
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json");
    if !json {
        return None;
    }
    // The error's lines without the usage and the help hint that follow it: the arguments
    // left out are listed on lines of their own, and a tip in a paragraph of its own.
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .take_while(|line| !line.is_empty() && !line.starts_with("Usage:"));
    let mut message = first.map(str::trim).collect::<Vec<_>>().join(" ");
    for tip in rendered
        .lines()
        .skip_while(|line| !line.is_empty())
        .filter_map(|line| line.trim_start().strip_prefix("tip: "))
    {
        message = format!("{message}; {tip}");
    }
    let message = message.trim_start_matches("error: ");
    let object = serde_json::json!({ "error": { "code": "cli", "message": message } });
    serde_json::to_string_pretty(&object).ok()
}

/// The environment variable a refused value came from: the refused flag reads one, the
/// variable holds that value, and `args` (the command line) does not give the flag.
fn refused_from_environment(
    e: &clap::Error,
    args: impl IntoIterator<Item = OsString>,
) -> Option<String> {
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let (Some(ContextValue::String(flag)), Some(ContextValue::String(value))) = (
        e.get(ContextKind::InvalidArg),
        e.get(ContextKind::InvalidValue),
    ) else {
        return None;
    };
    let long = flag.split_whitespace().next()?.strip_prefix("--")?;
    let given = args.into_iter().any(|arg| {
        arg.to_str().is_some_and(|arg| {
            arg.strip_prefix("--")
                .and_then(|arg| arg.strip_prefix(long))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
        })
    });
    if given {
        return None;
    }
    let mut variables = Vec::new();
    environment_variables_of(&Cli::command(), long, &mut variables);
    variables
        .into_iter()
        .find(|var| std::env::var_os(var).is_some_and(|set| set == value.as_str()))
}

/// The environment variables that `--long` reads, in `command` and its subcommands.
fn environment_variables_of(command: &clap::Command, long: &str, found: &mut Vec<String>) {
    for arg in command.get_arguments() {
        if arg.get_long() == Some(long)
            && let Some(var) = arg.get_env()
        {
            found.push(var.to_string_lossy().into_owned());
        }
    }
    for sub in command.get_subcommands() {
        environment_variables_of(sub, long, found);
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Herald server (API and delivery). With no flags: 127.0.0.1:7600, data in
    /// ./herald-data (embedded SQLite).
    #[command(after_help = "Examples:
  herald serve                                     # 127.0.0.1:7600, data in ./herald-data
  herald serve --listen 0.0.0.0:7600 --data-dir /var/lib/herald
  HERALD_DATABASE_URL=postgres://herald@db/herald herald serve   # one of several nodes",
        // `--retention-days -1` is a number out of range, not a flag clap does not know.
        allow_negative_numbers = true)]
    Serve(Box<Settings>),
    /// Apply database migrations, re-encrypt stored secrets if --encryption-key is set, and exit
    /// (`serve` does both on start).
    Migrate(Box<MigrateSettings>),
    /// Copy the embedded database (and the generated admin token) into a new directory while
    /// the server runs: a consistent snapshot, from which `herald serve --data-dir` restores.
    #[command(after_help = "Examples:
  herald backup --to /backups/herald-$(date +%F)   # from ./herald-data
  herald backup --data-dir /var/lib/herald --to /backups/herald-$(date +%F)")]
    Backup(backup::BackupArgs),
    /// Copy the embedded database into an empty PostgreSQL database, to run several nodes on
    /// it: organizations, keys, webhooks and their secrets, event types, WebSub subscriptions,
    /// events, deliveries (pending ones too) and attempts, all or nothing. Stop the server
    /// first.
    ///
    /// Give the encryption keys the nodes will have: every stored secret must open with them,
    /// and the copy then seals those stored plain with HERALD_ENCRYPTION_KEY. The embedded
    /// database is brought to this version's schema once the target is found usable, and not
    /// otherwise rewritten; its server will not start again once copied.
    #[command(after_help = "Examples:
  herald copy --to postgres://herald@db/herald     # from ./herald-data
  herald copy --data-dir /var/lib/herald --to \"$HERALD_DATABASE_URL\"")]
    Copy(Box<copy::CopyArgs>),
    /// Receive webhooks locally for testing: print each request, check its signature (Standard
    /// Webhooks, Optare, hub or Opal) with --secret, answer WebSub challenges.
    #[command(after_help = "Examples:
  herald listen --secret whsec_…                   # http://127.0.0.1:7700/, 401 on a bad signature
  herald listen --status 503 --delay-ms 2000       # see how retries behave")]
    Listen(listen::ListenArgs),
    /// Benchmark Herald on this machine: start a server on a temporary data directory (or use
    /// --server), a fast receiver and producers on loopback, run scenarios (burst, batch,
    /// latency, fanout, slow-endpoint, failing-endpoint, backlog, restart, and relay to calibrate)
    /// and print a table.
    #[command(after_help = "Examples:
  herald bench                                     # every scenario, on a temporary server
  herald bench --scenario burst,latency")]
    Bench(bench::BenchArgs),
    /// Manage organizations on a running server.
    Orgs {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        command: client::OrgsCommand,
    },
    /// Manage an organization's API keys (for producers posting its events) on a running server.
    Keys {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        command: client::KeysCommand,
    },
    /// Manage an organization's webhooks on a running server.
    #[command(after_help = "Examples:
  herald webhooks create --org acme --name crm --url https://crm.example.com/hooks --event user.created
  herald webhooks update --org acme wh_… --retry-schedule 0,60,600 --header \"Authorization: $TOKEN\"
  herald webhooks test --org acme wh_…             # waits for the endpoint's answer
  herald webhooks enable --org acme wh_…           # WebSub webhooks verify each channel first")]
    Webhooks {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        command: client::WebhooksCommand,
    },
    /// Event types (an organization's and the built-in catalogs), and posting events.
    Events {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        command: client::EventsCommand,
    },
    /// Read delivery history, resend and recover.
    #[command(after_help = "Examples:
  herald deliveries list --org acme --webhook wh_… --state failed
  herald deliveries get --org acme dlv_…           # every attempt, and the endpoint's last answer
  herald deliveries retry --org acme dlv_…         # attempt it now; waits for the answer
  herald deliveries recover --org acme --webhook wh_… --since 6h")]
    Deliveries {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        command: client::DeliveriesCommand,
    },
    /// Post an event (or a batch) from --type/--data, a file, or standard input.
    ///
    /// A file or standard input holds one event, an array of them, or JSON Lines (one event
    /// per line). More events than one request takes (1000, or 1 MiB) go in several requests,
    /// in order, with progress on standard error; if one fails, the message says which events
    /// were stored and where to go on from. With --json, standard output gets the answers, or
    /// the server's error with its `field` counted in the whole input (`[1200].type`), the
    /// event's `line`, and how many events were `stored`, in the request that `failed`, and
    /// `not_sent`.
    #[command(after_help = "Examples:
  herald send --org acme --type user.created --data '{\"user\": {\"id\": \"u1\"}}' --id evt-1
  herald send --org acme --file events.json        # one event or an array of them
  herald send --org acme --file export.jsonl       # one event per line, any number
  producer | herald send --org acme                # from standard input")]
    Send {
        // Its own options first: the connection's come after, under their own heading.
        #[command(flatten)]
        args: client::SendArgs,
        #[command(flatten)]
        conn: client::Connection,
    },
}

/// A signal that asks a long-running command to stop.
pub(crate) enum Signal {
    CtrlC,
    Term,
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM, saying which.
pub(crate) async fn ctrl_c_or_sigterm() -> Signal {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Signal::CtrlC,
        _ = term => Signal::Term,
    }
}

/// Set once standard output's reader has gone away.
static STDOUT_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes one line to standard output for [`out!`]. Once the reader has gone away
/// (`herald … | head`), the rest of the output goes nowhere and the command ends as it would
/// have: its exit status still says whether it succeeded (a failure printed as JSON first is
/// not taken for a success).
pub(crate) fn write_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            STDOUT_GONE.store(true, Ordering::Relaxed);
            return;
        }
        note!("error: could not write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Whether standard output's reader has gone away: a command that would print for ever
/// (`herald listen`) stops then.
pub(crate) fn stdout_gone() -> bool {
    STDOUT_GONE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Writes one line to standard error for [`note!`], whatever becomes of it: a closed standard
/// error must not turn a command's outcome into a panic.
pub(crate) fn write_note(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Variables read outside the commands' arguments: by the CLI's token fallback and by the
/// scripts (`scripts/`); tests' own are `HERALD_TEST_*`.
const READ_ELSEWHERE: &[&str] = &["HERALD_ADMIN_TOKEN", "HERALD_BIN", "HERALD_BENCH_PG"];

/// The `HERALD_*` variables set here that Herald does not read, each with the one it most
/// likely misspells: a setting misspelt (`HERALD_LEASE_SECOND`) would otherwise be ignored
/// without a word.
pub(crate) fn unknown_variables() -> Vec<(String, Option<String>)> {
    use clap::CommandFactory;
    fn read_by(command: &clap::Command, into: &mut std::collections::BTreeSet<String>) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                into.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in command.get_subcommands() {
            read_by(sub, into);
        }
    }
    let mut known = std::collections::BTreeSet::new();
    read_by(&Cli::command(), &mut known);
    known.extend(READ_ELSEWHERE.iter().map(|v| v.to_string()));
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| {
            name.starts_with("HERALD_")
                && !name.starts_with("HERALD_TEST_")
                && !known.contains(name)
        })
        .map(|name| {
            let meant = herald_core::suggest::closest(&name, known.iter().map(String::as_str));
            let meant = meant.map(str::to_owned);
            (name, meant)
        })
        .collect()
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let is_client = matches!(
        cli.command,
        Command::Orgs { .. }
            | Command::Keys { .. }
            | Command::Webhooks { .. }
            | Command::Events { .. }
            | Command::Deliveries { .. }
            | Command::Send { .. }
    );
    if is_client {
        // `herald serve` logs these; a client command says them where its user looks.
        for (name, meant) in unknown_variables() {
            note!(
                "warning: {name} is set, but Herald has no such setting{}: it is ignored",
                herald_core::suggest::did_you_mean(meant.as_deref())
            );
        }
    }
    let json = match &cli.command {
        Command::Orgs { conn, .. }
        | Command::Keys { conn, .. }
        | Command::Webhooks { conn, .. }
        | Command::Events { conn, .. }
        | Command::Deliveries { conn, .. }
        | Command::Send { conn, .. } => conn.json,
        _ => false,
    };
    let done = match cli.command {
        Command::Serve(settings) => serve::serve(*settings),
        Command::Migrate(settings) => serve::migrate(*settings),
        Command::Backup(args) => backup::backup(args),
        Command::Copy(args) => copy::copy(*args),
        Command::Listen(args) => listen::listen(args),
        Command::Bench(args) => bench::bench(args),
        Command::Orgs { conn, command } => client::orgs(conn, command),
        Command::Keys { conn, command } => client::keys(conn, command),
        Command::Webhooks { conn, command } => client::webhooks(conn, command),
        Command::Events { conn, command } => client::events(conn, command),
        Command::Deliveries { conn, command } => client::deliveries(conn, command),
        Command::Send { conn, args } => client::send(conn, args),
    };
    if json && let Err(e) = &done {
        client::print_error_unless_printed(e);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("herald").chain(args.iter().copied()))
    }

    #[test]
    fn a_negative_number_for_a_setting_is_a_value_out_of_range() {
        let err = parse(&["serve", "--retention-days", "-1"]).err().unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{err}");
        assert!(
            err.to_string().contains("'-1' for '--retention-days"),
            "{err}"
        );
        // Every number setting says its range, alike (not "invalid digit").
        for (flag, range) in [
            ("--retention-days", "0..=36500"),
            ("--stop-grace-seconds", "0..=600"),
            ("--header-timeout-ms", "1..=3600000"),
            ("--max-body-bytes", "1024..=1073741824"),
            ("--max-body-bytes-in-flight", "1024..=1099511627776"),
            ("--admission-wait-ms", "0..=3600000"),
        ] {
            let err = parse(&["serve", flag, "-1"]).err().unwrap().to_string();
            assert!(err.contains(&format!("-1 is not in {range}")), "{err}");
        }
    }

    #[test]
    fn the_event_type_takes_either_name_in_the_lists_and_in_send() {
        for args in [
            &["events", "list", "--org", "a", "--event-type", "x"][..],
            &["send", "--org", "a", "--event-type", "x", "--data", "{}"][..],
            &[
                "deliveries",
                "list",
                "--org",
                "a",
                "--webhook",
                "w",
                "--type",
                "x",
            ][..],
        ] {
            assert!(parse(args).is_ok(), "{args:?}");
        }
    }

    #[test]
    fn a_client_flag_before_the_command_is_said_to_go_after_it() {
        let os = |args: &[&str]| args.iter().map(OsString::from).collect::<Vec<_>>();
        for (args, tip) in [
            (
                &["--json", "webhooks", "list", "--org", "acme"][..],
                "--json goes after the command: `herald webhooks list --org acme --json`",
            ),
            (
                &["--server=http://h", "orgs", "list"][..],
                "--server goes after the command: `herald orgs list --server …`",
            ),
            (
                &["--token", "hk_secret", "orgs", "list"][..],
                "--token goes after the command: `herald orgs list --token …`",
            ),
            // Every client flag before the command moves, and no token is said again,
            // wherever it stood.
            (
                &[
                    "--json",
                    "--token",
                    "hk_secret",
                    "webhooks",
                    "list",
                    "--token=hk_secret",
                ][..],
                "--json goes after the command: `herald webhooks list --json --token …`",
            ),
        ] {
            let mut e = parse(args).unwrap_err();
            let said = client_flag_before_command(&e, os(args)).unwrap_or_default();
            assert_eq!(said, tip);
            // The token given, wherever it stood, is never said again.
            assert!(!said.contains("hk_secret"), "{said}");
            e.insert(
                ContextKind::Suggested,
                ContextValue::StyledStrs(vec![tip.into()]),
            );
            let object = json_error(&e, args.iter().map(OsString::from)).unwrap_or_default();
            assert!(
                object.contains(&format!("found; {tip}")) || !args.contains(&"--json"),
                "{object}"
            );
        }
        assert_eq!(
            client_flag_before_command(
                &parse(&["orgs", "list", "--bogus"]).unwrap_err(),
                os(&["orgs", "list", "--bogus"])
            ),
            None
        );
    }

    #[test]
    fn a_usage_error_is_a_json_error_object_only_when_json_is_asked_for() {
        let args = ["orgs", "get", "--json"];
        let e = parse(&args).unwrap_err();
        let object = json_error(&e, args.iter().map(OsString::from)).unwrap();
        let object: serde_json::Value = serde_json::from_str(&object).unwrap();
        assert_eq!(object["error"]["code"], "cli");
        let message = object["error"]["message"].as_str().unwrap();
        assert_eq!(
            message,
            "the following required arguments were not provided: <ID>"
        );
        // Without --json, or with it only after `--` (a value, not the flag), or for --help: none.
        assert!(json_error(&e, ["orgs", "get"].map(OsString::from)).is_none());
        assert!(json_error(&e, ["orgs", "get", "--", "--json"].map(OsString::from)).is_none());
        let help = parse(&["orgs", "get", "--help", "--json"]).unwrap_err();
        assert!(
            json_error(
                &help,
                ["orgs", "get", "--help", "--json"].map(OsString::from)
            )
            .is_none()
        );
    }
}
