//! `herald copy`: moves a deployment from the embedded database to PostgreSQL, when one node is
//! to become several. The copying is the store's (`herald_store::copy`); this command checks
//! where from and where to, shows progress, and says what to do next.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use herald_store::cipher::SecretCipher;
use herald_store::copy::{Progress, sqlite_to_postgres};
use herald_store::{PostgresOptions, PostgresStore, SqliteStore};

use super::bench::report::thousands;
use crate::app;
use crate::config::{EncryptionSettings, LogSettings, StorageSettings, database_for_display};
use crate::database_lock::DatabaseLock;

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The PostgreSQL database to copy into (`postgres://user[:password]@host[:port]/database`).
    /// It must hold no Herald data; its schema is created if it has none. TLS as for
    /// HERALD_DATABASE_URL: `?sslmode=verify-full&sslrootcert=/path/to/ca.pem` checks the server.
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
    check_target(&args.to)?;
    let shown = database_for_display(&args.to);
    let source = args.data_dir.join("herald.db");
    if !source.is_file() {
        bail!(
            "there is no Herald database in {}; give the server's data directory with --data-dir \
             (or HERALD_DATA_DIR)",
            args.data_dir.display()
        );
    }
    refuse_if_copied_before(&args.data_dir)?;
    let cipher = app::cipher_of(&args.encryption)?;
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
    let target = PostgresStore::new(
        &args.to,
        PostgresOptions { pool_size: 2 },
        SecretCipher::none(),
    )
    .map_err(|e| anyhow::anyhow!("--to: {}", herald_core::error_chain(&e)))?;
    target.migrate().await.map_err(|e| {
        let said = herald_core::error_chain(&e);
        anyhow::anyhow!("database {shown}: {said}{}", app::what_to_do_about(&said))
    })?;

    note!("Copying {} to {shown} ...", source.display());
    let started = Instant::now();
    let mut shown_at = Instant::now();
    // Brings it to this version's schema first, as a start of this version would: the one
    // change the copy makes to it, once the target is locked and found usable (a refused
    // target leaves it as it was, for the version that wrote it to start on again).
    let migrate_source = {
        let (source, shown_dir) = (source.clone(), args.data_dir.display().to_string());
        async move {
            tokio::task::spawn_blocking(move || SqliteStore::open(&source))
                .await
                .map_err(|e| e.to_string())?
                .map(drop)
                .map_err(|e| {
                    format!(
                        "could not open the database in {shown_dir}: {}",
                        herald_core::error_chain(&e)
                    )
                })
        }
    };
    let copying = sqlite_to_postgres(
        &source,
        &target,
        Arc::new(cipher),
        migrate_source,
        |p: Progress<'_>| {
            let done = p.copied == p.total;
            if done || shown_at.elapsed() >= PROGRESS_EVERY {
                shown_at = Instant::now();
                note!(
                    "  {:<14} {:>12} of {}{}",
                    p.table,
                    thousands(p.copied),
                    thousands(p.total),
                    if done { "" } else { " ..." }
                );
            }
        },
    );
    let copied = tokio::select! {
        copied = copying => copied
            .map_err(|e| anyhow::anyhow!("{}; nothing was copied", herald_core::error_chain(&e)))?,
        _ = super::ctrl_c_or_sigterm() => {
            // The transaction ends unfinished with the process: PostgreSQL rolls it back.
            note!("Stopped: nothing was copied; run `herald copy` again to copy everything.");
            std::process::exit(130);
        }
    };
    mark_copied(&args.data_dir, &shown)?;

    // Opened as a node opens it: sealed with the key given, if a secret was stored plain.
    let nodes = StorageSettings {
        data_dir: args.data_dir.clone(),
        database_url: Some(args.to.clone()),
        database_pool_size: 1,
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
    .map(|(one, table)| {
        let counted = match count(table) {
            1 => format!("1 {one}"),
            n => format!("{} {table}", thousands(n)),
        };
        let deleted = copied.deleted_webhooks;
        if table != "webhooks" || deleted == 0 {
            return counted;
        }
        let its = if deleted == 1 { "its" } else { "their" };
        format!(
            "{counted} ({} deleted, kept for {its} history)",
            thousands(deleted)
        )
    });
    out!(
        "Copied in {:.1} s: {}.",
        started.elapsed().as_secs_f64(),
        counted.join(", ")
    );
    let password = if shown == args.to {
        ""
    } else {
        " (with the password, left out here)"
    };
    out!("Start the nodes on it: HERALD_DATABASE_URL='{shown}' herald serve{password}");
    out!(
        "The server on {} will not start again (it would send what it had pending a second \
         time, and events it took would not reach PostgreSQL); {} says so.",
        args.data_dir.display(),
        crate::data_dir::COPIED_MARKER
    );
    if args.data_dir.join("admin-token").is_file() {
        out!(
            "The admin token was generated in {}; give every node the same one with \
             HERALD_ADMIN_TOKEN (nodes on PostgreSQL each generate their own otherwise).",
            args.data_dir.join("admin-token").display()
        );
    }
    if count("api_keys") > 0 {
        out!("API keys were copied and work as before.");
    }
    if args.encryption.encryption_key.is_some() {
        out!(
            "Webhook secrets are encrypted with HERALD_ENCRYPTION_KEY in PostgreSQL: give every \
             node the same key."
        );
    }
    Ok(())
}

/// Refuses what is not a PostgreSQL URL naming its database (without one, PostgreSQL would take
/// the user's name: for `postgres`, its maintenance database).
fn check_target(url: &str) -> anyhow::Result<()> {
    const SHAPE: &str = "postgres://user[:password]@host[:port]/database";
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        bail!("--to must be a PostgreSQL URL, {SHAPE}");
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let after_host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    match after_host.split_once('/') {
        Some((_, database)) if !database.is_empty() => Ok(()),
        _ if std::env::var_os("PGDATABASE").is_some_and(|v| !v.is_empty()) => Ok(()),
        _ => bail!("--to names no database; give one: {SHAPE} (or set PGDATABASE)"),
    }
}

/// Refuses a data directory copied before: two databases would then hold what it had pending,
/// sent twice if nodes run on both, and the note of where the first copy went would be lost.
fn refuse_if_copied_before(data_dir: &Path) -> anyhow::Result<()> {
    let Some((before, marker)) = crate::data_dir::copied_note(data_dir) else {
        return Ok(());
    };
    bail!(
        "this data directory was copied to PostgreSQL before: {before}. A second copy would put \
         what it had pending into two databases, sent twice if nodes run on both. To copy it \
         again all the same (that first database was dropped, say), remove {} and run `herald \
         copy` again",
        marker.display()
    )
}

/// Leaves a note in the data directory that keeps `herald serve` from running on it again.
fn mark_copied(data_dir: &Path, shown: &str) -> anyhow::Result<()> {
    let path = data_dir.join(crate::data_dir::COPIED_MARKER);
    let at = herald_core::Clock::now(&herald_core::SystemClock).to_rfc3339();
    // Private, as the rest of the directory is: it names the database copied to.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let note = format!(
        "Copied to {shown} at {at} by `herald copy`.\n\
         Start Herald on PostgreSQL instead: a server on this directory would send the \
         deliveries it had pending a second time, and events it took would not reach \
         PostgreSQL. Remove this file to run it anyway.\n"
    );
    options
        .open(&path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, note.as_bytes()))
        .with_context(|| {
            format!(
                "the copy is complete, but {} could not be written; do not start the server on {} \
             again",
                path.display(),
                data_dir.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::check_target;

    #[test]
    fn a_target_must_name_its_database() {
        assert!(check_target("postgres://herald:pw@db:5432/herald?sslmode=disable").is_ok());
        assert!(check_target("postgresql://db/herald").is_ok());
        for refused in [
            "postgres://postgres@127.0.0.1:5432",
            "postgres://postgres@127.0.0.1:5432/",
            "postgres://u@h/?x=1",
            "mysql://u@h/db",
            "herald",
        ] {
            assert!(check_target(refused).is_err(), "{refused}");
        }
        // A slash in the password is not the database.
        assert!(check_target("postgres://u:a/b@h").is_err());
    }
}
