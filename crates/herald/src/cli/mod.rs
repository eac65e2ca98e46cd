//! The `herald` command line.

/// `println!` for command output. When the reader has gone away (`herald … | head`), the command
/// ends quietly with success, as Unix tools do, instead of panicking on the broken pipe.
macro_rules! out {
    () => {
        $crate::cli::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_line(format_args!($($arg)*))
    };
}

mod bench;
mod client;
mod listen;
mod serve;

use clap::{Parser, Subcommand};

use crate::config::{MigrateSettings, Settings};

/// Herald: webhook delivery for identity and access events.
///
/// Producers post events to Herald; Herald stores them durably, fans them out to every
/// subscribed webhook, signs each request, delivers it, retries on schedule and keeps every
/// attempt.
#[derive(Debug, Parser)]
#[command(name = "herald", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Herald server (API and delivery). With no flags: 127.0.0.1:7600, data in
    /// ./herald-data (embedded SQLite).
    Serve(Box<Settings>),
    /// Apply database migrations, re-encrypt stored secrets if --encryption-key is set, and exit
    /// (`serve` does both on start).
    Migrate(Box<MigrateSettings>),
    /// Receive webhooks locally for testing: print each request, check its signature (Standard
    /// Webhooks, Optare, hub or Opal) with --secret, answer WebSub challenges.
    Listen(listen::ListenArgs),
    /// Benchmark Herald on this machine: start a server on a temporary data directory (or use
    /// --server), a fast receiver and producers on loopback, run scenarios (burst, batch,
    /// latency, fanout, slow-endpoint, failing-endpoint, backlog, restart, and relay to calibrate)
    /// and print a table.
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
    Deliveries {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        command: client::DeliveriesCommand,
    },
    /// Post an event (or a batch) from --type/--data, a file, or standard input.
    Send {
        #[command(flatten)]
        conn: client::Connection,
        #[command(flatten)]
        args: client::SendArgs,
    },
}

/// Writes one line to standard output for [`out!`].
pub(crate) fn write_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: could not write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(settings) => serve::serve(*settings),
        Command::Migrate(settings) => serve::migrate(*settings),
        Command::Listen(args) => listen::listen(args),
        Command::Bench(args) => bench::bench(args),
        Command::Orgs { conn, command } => client::orgs(conn, command),
        Command::Keys { conn, command } => client::keys(conn, command),
        Command::Webhooks { conn, command } => client::webhooks(conn, command),
        Command::Events { conn, command } => client::events(conn, command),
        Command::Deliveries { conn, command } => client::deliveries(conn, command),
        Command::Send { conn, args } => client::send(conn, args),
    }
}
