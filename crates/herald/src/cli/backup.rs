//! `herald backup`: a consistent copy of the embedded database, taken while the server runs.
//!
//! The copy itself is the store's (`herald_store::sqlite::backup`); this command checks where
//! from and where to, keeps the generated admin token with it, and says how to restore.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;

use crate::config::StorageSettings;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The directory to write the copy into (created, readable by this user only); it must not
    /// hold a database already.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    #[command(flatten)]
    pub storage: StorageSettings,
}

pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    if args.storage.database_url.is_some() {
        bail!(
            "Herald's PostgreSQL database is backed up with PostgreSQL's tools (pg_dump -Fc, or \
             your provider's snapshots); keep HERALD_ENCRYPTION_KEY with the dump if you set one"
        );
    }
    let source = args.storage.data_dir.join("herald.db");
    if !source.is_file() {
        bail!(
            "there is no Herald database in {}; give the server's data directory with --data-dir \
             (or HERALD_DATA_DIR)",
            args.storage.data_dir.display()
        );
    }
    if args.to.exists() && !args.to.is_dir() {
        bail!(
            "{} is a file; give --to a new or empty directory",
            args.to.display()
        );
    }
    let target = args.to.join("herald.db");
    if target.exists() {
        bail!(
            "{} already holds a database; back up into a new or empty directory",
            args.to.display()
        );
    }
    let made_to = !args.to.exists();
    crate::data_dir::make_data_dir(&args.to, &crate::data_dir::BACKUP_DIR)?;
    let size_of = |path: &Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    // What is not yet moved into the file is in its write-ahead log beside it.
    let wal = size_of(&args.storage.data_dir.join("herald.db-wal"));
    note!(
        "Copying {} ({} and {} of write-ahead log) to {} ...",
        source.display(),
        in_units(size_of(&source)),
        in_units(wal),
        target.display()
    );
    let started = Instant::now();
    let sealed = match herald_store::sqlite::backup::copy(&source, &target) {
        Ok(sealed) => sealed,
        Err(e) => {
            // A directory made for a copy that was not made goes too: left, it looked like a
            // backup (and an empty one is no backup).
            if made_to {
                let _ = std::fs::remove_dir(&args.to);
            }
            return Err(match e {
                herald_store::sqlite::backup::CopyError::Source(e) => anyhow::Error::new(e)
                    .context(format!("could not read the database {}", source.display())),
                herald_store::sqlite::backup::CopyError::Target(e) => anyhow::Error::new(e)
                    .context(format!(
                        "could not copy the database to {}",
                        target.display()
                    )),
            });
        }
    };
    restrict(&target)?;
    let mut kept = vec![format!("herald.db ({})", in_units(size_of(&target)))];
    if copy_admin_token(&args.storage.data_dir, &args.to)? {
        kept.push("admin-token".into());
    }
    let copied = copy_copied_marker(&args.storage.data_dir, &args.to)?;
    if copied {
        kept.push(crate::data_dir::COPIED_MARKER.into());
    }
    out!(
        "Backed up to {} in {:.1} s: {}.",
        args.to.display(),
        started.elapsed().as_secs_f64(),
        kept.join(", ")
    );
    if copied {
        // The directory was moved to PostgreSQL: the copy keeps the note that stops a server
        // on it from sending what it had pending a second time.
        out!(
            "It was copied to PostgreSQL ({} says where): the nodes there serve it, and \
             `herald serve` refuses this copy as it refuses the original.",
            crate::data_dir::COPIED_MARKER
        );
    } else {
        out!(
            "To restore, start Herald on it: herald serve --data-dir {}",
            args.to.display()
        );
        out!(
            "Restored, it goes back to this moment: every delivery pending now is sent again \
             (delivered since or not: at least once), and events accepted after now are not in \
             it."
        );
    }
    if sealed {
        out!(
            "Webhook secrets in it are encrypted: keep HERALD_ENCRYPTION_KEY (and any \
             HERALD_ENCRYPTION_OLD_KEYS) with the copy, or it will not start."
        );
    }
    Ok(())
}

/// A size as people read it: `954 KiB`, `3.2 MiB`, `1.5 GiB`.
fn in_units(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    // Up to 999 KiB: a size that would round to 1024 KiB reads as 1.0 MiB.
    if b < 1000.0 * KIB {
        format!("{:.0} KiB", (b / KIB).ceil())
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.1} GiB", b / (KIB * KIB * KIB))
    }
}

/// The copy holds every secret the database does: readable by this user only.
fn restrict(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("could not make {} private", path.display()))?;
    }
    Ok(())
}

/// Copies the generated admin token, if there is one, so that the restored server answers to
/// the same token. Answers whether there was.
fn copy_admin_token(data_dir: &Path, to: &Path) -> anyhow::Result<bool> {
    let Ok(token) = std::fs::read_to_string(data_dir.join("admin-token")) else {
        return Ok(false);
    };
    crate::data_dir::write_private(&to.join("admin-token"), token.trim_end())
        .with_context(|| format!("could not write the admin token into {}", to.display()))?;
    Ok(true)
}

/// Copies the note `herald copy` left (see [`crate::data_dir::COPIED_MARKER`]), if there is one: a
/// server started on the backup would otherwise send what it had pending a second time.
/// Answers whether there was.
fn copy_copied_marker(data_dir: &Path, to: &Path) -> anyhow::Result<bool> {
    let from = data_dir.join(crate::data_dir::COPIED_MARKER);
    if !from.is_file() {
        return Ok(false);
    }
    let copy = to.join(crate::data_dir::COPIED_MARKER);
    std::fs::copy(&from, &copy)
        .with_context(|| format!("could not copy {} into {}", from.display(), to.display()))?;
    restrict(&copy)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::in_units;

    #[test]
    fn sizes_read_as_people_read_them() {
        assert_eq!(in_units(0), "0 KiB");
        assert_eq!(in_units(976_896), "954 KiB");
        assert_eq!(in_units(3 * 1024 * 1024 + 200 * 1024), "3.2 MiB");
        assert_eq!(in_units(3 << 30), "3.0 GiB");
        assert_eq!(in_units(1_048_575), "1.0 MiB");
    }
}
