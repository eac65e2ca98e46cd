//! The data directory: created private to Herald's user, refused once `herald copy` moved it
//! to PostgreSQL, warned of when its database went missing, and where the admin token Herald
//! generates is kept.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rand::RngCore;

use crate::app::AdminTokenSource;
use crate::config::Settings;

/// A directory Herald makes, as its messages name it.
pub(crate) struct Dir {
    /// "the data directory".
    pub name: &'static str,
    /// The flag (and variable) that gives it.
    pub given_by: &'static str,
    /// What it holds, as the warning about its permissions says it.
    pub holds: &'static str,
}

/// The embedded database's data directory.
pub(crate) const DATA_DIR: Dir = Dir {
    name: "the data directory",
    given_by: "--data-dir (or HERALD_DATA_DIR)",
    holds: "webhook secrets and events",
};

/// The data directory of a node on PostgreSQL, which keeps only the admin token it generates.
pub(crate) const TOKEN_DIR: Dir = Dir {
    holds: "the admin token it generates",
    ..DATA_DIR
};

/// Where `herald backup` writes.
pub(crate) const BACKUP_DIR: Dir = Dir {
    name: "the backup directory",
    given_by: "--to",
    ..DATA_DIR
};

/// What to do about a directory this user may not write in: most often one made by root
/// before Herald ran as a user of its own. Named is the nearest that exists: `dir`, or the
/// parent it could not be made in.
pub(crate) fn permission_hint(e: &std::io::Error, dir: &Path) -> String {
    if e.kind() != std::io::ErrorKind::PermissionDenied {
        return String::new();
    }
    let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(dir);
    format!(
        "; Herald's user may not write in {}: make it that user's (`chown`) or give another",
        existing.display()
    )
}

/// Creates `dir`, readable by this user only: a data directory holds the database (webhook
/// secrets, unless `--encryption-key` seals them, and every event) and the admin token, or on
/// PostgreSQL the admin token alone. One that already exists is left as its owner set it, with
/// a warning if users outside its owner and group may reach into it.
#[cfg(unix)]
pub(crate) fn make_data_dir(dir: &std::path::Path, kind: &Dir) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let Dir {
        name,
        given_by,
        holds,
    } = kind;
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "{} is a file, not a directory; give a directory with {given_by}",
            dir.display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            let hint = permission_hint(&e, dir);
            anyhow::Error::new(e)
                .context(format!("could not create {name} {}{hint}", dir.display()))
        })?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("could not read {name} {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        tracing::warn!(
            data_dir = %dir.display(),
            mode = format!("{:o}", mode & 0o777),
            "other users of this machine can reach into {name}, which holds {holds}; make it \
             private with `chmod 700 {}`",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn make_data_dir(dir: &std::path::Path, kind: &Dir) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("could not create {} {}", kind.name, dir.display()))
}

/// The file `herald copy` leaves in a data directory it copied to PostgreSQL: `serve` will not
/// run on it again.
pub const COPIED_MARKER: &str = "copied-to-postgresql";

/// Refuses to serve an embedded database that was copied to PostgreSQL: what it had pending
/// would be sent a second time, and events it took would not reach the nodes.
pub(crate) fn refuse_if_copied(data_dir: &Path) -> anyhow::Result<()> {
    let Some((copied, marker)) = copied_note(data_dir) else {
        return Ok(());
    };
    bail!(
        "this data directory was copied to PostgreSQL: {copied}. Start Herald on PostgreSQL \
         (HERALD_DATABASE_URL) instead: this server would send what it had pending a second \
         time. To run it anyway, remove {}",
        marker.display()
    )
}

/// What `herald copy` noted in the data directory (`Copied to … at …`, its first line without
/// the full stop) and where, if it copied it.
pub(crate) fn copied_note(data_dir: &Path) -> Option<(String, PathBuf)> {
    let marker = data_dir.join(COPIED_MARKER);
    let note = std::fs::read_to_string(&marker).ok()?;
    let first = note
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches('.');
    Some((first.to_owned(), marker))
}

/// A data directory that held a Herald before (its write-ahead log, or the admin token it
/// generated) but has no database any more: a fresh, empty one is about to be created, which
/// an operator who deleted or lost `herald.db` should hear of before anything is stored in it.
pub(crate) fn warn_if_database_went_missing(data_dir: &Path) {
    if data_dir.join("herald.db").exists() {
        return;
    }
    let left = ["herald.db-wal", "herald.db-shm", "admin-token"]
        .into_iter()
        .filter(|f| data_dir.join(f).exists())
        .collect::<Vec<_>>();
    if !left.is_empty() {
        tracing::warn!(
            data_dir = %data_dir.display(),
            found = ?left,
            "this data directory held a Herald database, but herald.db is gone: starting an empty one. If that is not what you want, stop Herald and restore herald.db (removing herald.db-wal and herald.db-shm)"
        );
    }
}

/// Below this length a configured admin token (or metrics token) is warned of.
pub(crate) const MIN_ADMIN_TOKEN_LEN: usize = 16;

pub(crate) fn admin_token(
    settings: &Settings,
    data_dir: &Path,
) -> anyhow::Result<(String, AdminTokenSource)> {
    if let Some(token) = &settings.security.admin_token {
        if token.trim().is_empty() {
            anyhow::bail!(
                "the admin token (HERALD_ADMIN_TOKEN / --admin-token) is empty; set a long random string, or unset it to have one generated"
            );
        }
        if token.len() < MIN_ADMIN_TOKEN_LEN {
            // Refusing it would stop a server whose deployment chose it; saying so is enough.
            tracing::warn!(
                length = token.len(),
                "the admin token is short and could be guessed; use at least {MIN_ADMIN_TOKEN_LEN} random characters (`openssl rand -hex 32`)"
            );
        }
        return Ok((token.clone(), AdminTokenSource::Configured));
    }
    let path = data_dir.join("admin-token");
    if let Some(stored) = kept_admin_token(&path)? {
        if stored.len() < MIN_ADMIN_TOKEN_LEN {
            tracing::warn!(
                length = stored.len(),
                path = %path.display(),
                "the admin token kept in this file is short and could be guessed; use at least {MIN_ADMIN_TOKEN_LEN} random characters (`openssl rand -hex 32`)"
            );
        }
        return Ok((stored, AdminTokenSource::Stored(path)));
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("hadm_{}", hex::encode(bytes));
    write_private(&path, &token)
        .with_context(|| format!("could not save the admin token to {}", path.display()))?;
    Ok((token, AdminTokenSource::Generated(path)))
}

/// The admin token kept in `path`, if one is (a missing or empty file keeps none). One there
/// that cannot be read stops the start: a new token would replace one someone relies on.
pub(crate) fn kept_admin_token(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(stored) => Ok(Some(stored.trim().to_owned()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => anyhow::bail!(
            "could not read the admin token kept in {}: {e}. Make it a text file the user \
             Herald runs as can read, or delete it to have a new token generated (clients using \
             the old one will need the new one)",
            path.display()
        ),
    }
}

/// Writes a file only its owner can read.
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(token: &str, dir: &Path) -> anyhow::Result<(String, AdminTokenSource)> {
        let mut settings = Settings::for_data_dir(dir.to_path_buf());
        settings.security.admin_token = Some(token.into());
        admin_token(&settings, dir)
    }

    /// A directory refused (root's, say) says whose it must be; a backup's is named as one,
    /// with its own flag.
    #[test]
    fn a_directory_that_cannot_be_made_says_what_to_do() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let dir = tempfile::tempdir().unwrap();
        let hint = permission_hint(&denied, dir.path());
        let named = format!("may not write in {}:", dir.path().display());
        assert!(hint.contains(&named) && hint.contains("chown"), "{hint}");
        // Not made yet: the parent it is to be made in is named.
        let hint = permission_hint(&denied, Path::new("/etc/herald-never-made/data"));
        assert!(hint.contains("may not write in /etc:"), "{hint}");
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(permission_hint(&missing, Path::new("/x")), "");
        let file = tempfile::NamedTempFile::new().unwrap();
        let e = make_data_dir(file.path(), &BACKUP_DIR).unwrap_err();
        assert!(
            format!("{e}").ends_with("give a directory with --to"),
            "{e}"
        );
        let e = make_data_dir(&file.path().join("below"), &BACKUP_DIR).unwrap_err();
        assert!(
            format!("{e}").starts_with("could not create the backup directory"),
            "{e}"
        );
    }

    #[test]
    fn a_configured_admin_token_is_used_even_if_short_but_not_if_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (token, source) = with_token("secret", dir.path()).unwrap();
        assert_eq!(token, "secret");
        assert!(matches!(source, AdminTokenSource::Configured));
        let err = with_token("  ", dir.path()).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        assert!(!dir.path().join("admin-token").exists());
    }
}
