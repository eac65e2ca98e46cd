//! `herald copy`: moves a deployment from the embedded database to PostgreSQL, when one node is
//! to become several. The copying is the store's (`herald_store::copy`); this command checks
//! where from and where to, shows progress, and says what to do next.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use herald_store::cipher::SecretCipher;
use herald_store::copy::{Progress, sqlite_to_postgres};
use herald_store::{PostgresOptions, PostgresStore};

use super::bench::report::thousands;
use crate::app;
use crate::config::{EncryptionSettings, LogSettings, StorageSettings, redact_password};
use crate::database_lock::DatabaseLock;

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The PostgreSQL database to copy into (`postgres://user[:password]@host[:port]/database`).
    /// It must hold no Herald data; its schema is created if it has none.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// The data directory of the embedded database to copy. Stop the server using it first.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub encryption: EncryptionSettings,
    #[command(flatten)]
    pub logging: LogSettings,
}

/// How often progress is shown within a table.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

pub fn copy(args: CopyArgs) -> anyhow::Result<()> {
    super::serve::init_logging(&args.logging)?;
    super::serve::runtime()?.block_on(run(args))
}

async fn run(args: CopyArgs) -> anyhow::Result<()> {
    let shown = redact_password(&args.to);
    if !args.to.starts_with("postgres://") && !args.to.starts_with("postgresql://") {
        bail!("--to must be a PostgreSQL URL, postgres://user[:password]@host[:port]/database");
    }
    let source = args.data_dir.join("herald.db");
    if !source.is_file() {
        bail!(
            "there is no Herald database in {}; give the server's data directory with --data-dir \
             (or HERALD_DATA_DIR)",
            args.data_dir.display()
        );
    }
    let embedded = StorageSettings {
        data_dir: args.data_dir.clone(),
        database_url: None,
        database_pool_size: 1,
    };
    // Held to the end: events a server took after the copy began would not be in PostgreSQL.
    let _lock = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || {
            DatabaseLock::acquire_or_advise(
                &source,
                "stop that server before copying (events it took during the copy would not \
                 reach PostgreSQL)",
            )
        })
        .await??
    };
    // Brings it to this version's schema, and checks that its secrets open with the keys given.
    drop(app::open_store(&embedded, &args.encryption, true).await?);

    let target = PostgresStore::new(
        &args.to,
        PostgresOptions { pool_size: 2 },
        SecretCipher::none(),
    )
    .map_err(|e| anyhow::anyhow!("--to: {}", herald_core::error_chain(&e)))?;
    target
        .migrate()
        .await
        .map_err(|e| anyhow::anyhow!("database {shown}: {}", herald_core::error_chain(&e)))?;

    eprintln!("Copying {} to {shown} ...", source.display());
    let started = Instant::now();
    let mut shown_at = Instant::now();
    let copied = sqlite_to_postgres(&source, &target, |p: Progress<'_>| {
        let done = p.copied == p.total;
        if done || shown_at.elapsed() >= PROGRESS_EVERY {
            shown_at = Instant::now();
            eprintln!(
                "  {:<14} {:>12} of {}{}",
                p.table,
                thousands(p.copied),
                thousands(p.total),
                if done { "" } else { " ..." }
            );
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{}; nothing was copied", herald_core::error_chain(&e)))?;

    // Opened as a node opens it: every secret must open with the keys the nodes will have.
    let nodes = StorageSettings {
        database_url: Some(args.to.clone()),
        ..embedded.clone()
    };
    app::open_store(&nodes, &args.encryption, false)
        .await
        .context("the copy is complete, but a node could not open it")?;

    let count = |table: &str| {
        copied
            .rows
            .iter()
            .find(|(t, _)| *t == table)
            .map_or(0, |(_, n)| *n)
    };
    let counted = [
        ("organization", "organizations"),
        ("webhook", "webhooks"),
        ("event", "events"),
        ("delivery", "deliveries"),
        ("attempt", "attempts"),
    ]
    .map(|(one, table)| match count(table) {
        1 => format!("1 {one}"),
        n => format!("{} {table}", thousands(n)),
    });
    out!(
        "Copied in {:.1} s: {}.",
        started.elapsed().as_secs_f64(),
        counted.join(", ")
    );
    out!("Start the nodes on it: HERALD_DATABASE_URL={shown} herald serve");
    out!(
        "Do not start the server on {} again: events it took would not reach PostgreSQL, and the \
         deliveries it still had pending would be sent by both.",
        args.data_dir.display()
    );
    if args.data_dir.join("admin-token").is_file() {
        out!(
            "The admin token was generated in {}/admin-token; give every node the same one with \
             HERALD_ADMIN_TOKEN (nodes on PostgreSQL each generate their own otherwise). API keys \
             were copied and work as before.",
            args.data_dir.display()
        );
    }
    if args.encryption.encryption_key.is_some() {
        out!("Webhook secrets stay encrypted: give every node the same HERALD_ENCRYPTION_KEY.");
    }
    Ok(())
}
