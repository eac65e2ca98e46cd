//! `herald serve` and `herald migrate`.

use std::sync::Arc;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use herald_core::CorrectedClock;

use crate::app::{self, AdminTokenSource};
use crate::config::{LogFormat, LogSettings, MigrateSettings, Settings};

/// The PostgreSQL connection pool's own lines, kept to errors unless the filter names it: it
/// says "Connection error: db error" once per pooled connection when the database drops them
/// (32 lines for one restart), where Herald's own lines say what it means, once per 10 s.
const POOL_TARGET: &str = "deadpool";

pub(super) fn init_logging(logging: &LogSettings) -> anyhow::Result<()> {
    let mut filter = EnvFilter::try_new(&logging.log).with_context(|| {
        format!(
            "'{}' is not a valid log filter; try 'info' or 'herald=debug,info'",
            logging.log
        )
    })?;
    if !logging.log.contains(POOL_TARGET) {
        filter = filter.add_directive(format!("{POOL_TARGET}=error").parse()?);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match logging.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // Only while the filter is the default: `--log` given on the command line says otherwise.
    if std::env::var_os("RUST_LOG").is_some()
        && std::env::var_os("HERALD_LOG").is_none()
        && logging.log == "info"
    {
        tracing::warn!(
            "RUST_LOG is set, but Herald's log filter is HERALD_LOG (now '{}'): set HERALD_LOG instead",
            logging.log
        );
    }
    for (name, meant) in super::unknown_variables() {
        tracing::warn!(
            variable = %name,
            "{name} is set, but Herald has no such setting{}: it is ignored (`herald serve --help` lists them)",
            herald_core::suggest::did_you_mean(meant.as_deref())
        );
    }
    Ok(())
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

pub fn serve(mut settings: Settings) -> anyhow::Result<()> {
    init_logging(&settings.logging)?;
    fit_requests_to_open_files(&mut settings);
    runtime()?.block_on(async move {
        let listen = settings.server.listen;
        let public_url = settings.server.public_url.clone();
        let data_dir = settings.storage.data_dir.clone();
        let database = settings.storage.database_url_for_display();
        let shared_database = database.is_some();
        // How long history is kept and failing webhooks are tried, said with the rest.
        let settings_summary = (
            match settings.delivery.retention_days {
                0 => "forever".to_owned(),
                days => days.to_string(),
            },
            settings.delivery.disable_after_hours,
        );
        // What loosens or tightens outgoing requests and storage, said once at start: an
        // operator reading the log sees how this node is set up.
        let private_networks = settings.security.allow_private_networks.join(",");
        let insecure_urls = settings.security.allow_insecure_urls;
        // (An empty key is refused with the command line.)
        let encrypted = settings.encryption.encryption_key.is_some();
        let secrets_at_rest = if encrypted {
            "encrypted"
        } else if settings.encryption.encryption_old_keys.iter().any(|k| !k.trim().is_empty()) {
            // The first step of turning encryption on across nodes (docs/operations.md).
            "plain, opening those sealed with HERALD_ENCRYPTION_OLD_KEYS (set HERALD_ENCRYPTION_KEY to encrypt)"
        } else {
            "plain (set HERALD_ENCRYPTION_KEY to encrypt)"
        };
        // The address is taken first, so that a start that cannot serve creates nothing (not
        // even an admin token), but only listened on once the node is ready: while migrations
        // run, a load balancer's check finds the port closed rather than a node that hangs.
        let busy = |e| anyhow::Error::new(e).context(format!("could not listen on {listen}; is another program (another Herald?) using it? choose another address with --listen"));
        let socket = match listen {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(busy)?;
        #[cfg(unix)]
        socket.set_reuseaddr(true).map_err(busy)?;
        socket.bind(listen).map_err(busy)?;
        // The wall clock, corrected to the database server's when nodes share one.
        let app = app::build(settings, Arc::new(CorrectedClock::default())).await?;
        let listener = socket.listen(1024).map_err(busy)?;
        let addr = listener.local_addr()?;
        let base = public_url.unwrap_or_else(|| format!("http://{addr}"));
        match &database {
            Some(url) => tracing::info!(address = %addr, database = %url, "Herald {} is serving the API at {base}/v1 and the dashboard at {base}/", crate::BUILD),
            None => tracing::info!(address = %addr, data_dir = %data_dir.display(), "Herald {} is serving the API at {base}/v1 and the dashboard at {base}/", crate::BUILD),
        }
        tracing::info!(
            private_networks = if private_networks.is_empty() { "none" } else { private_networks.as_str() },
            insecure_urls,
            secrets_at_rest,
            retention_days = settings_summary.0,
            disable_after_hours = settings_summary.1,
            "delivering to public addresses{}{}",
            if private_networks.is_empty() { "" } else { " and the private networks allowed" },
            if insecure_urls { "; http:// allowed for every profile" } else { "" }
        );
        match &app.admin_token_source {
            AdminTokenSource::Generated(path) => {
                // Shown once, to the person at the terminal; never logged. Where standard
                // output is a file or a pipe (systemd's journal, a container's log) the token
                // would be kept wherever those logs go, so only where it is kept is said.
                use std::io::{IsTerminal, Write};
                let mut stdout = std::io::stdout().lock();
                if stdout.is_terminal() {
                    let _ = writeln!(stdout, "Admin token (shown once; kept in {}):\n\n    {}\n", path.display(), app.admin_token);
                    let _ = writeln!(stdout, "Try it:\n    curl -H 'Authorization: Bearer {}' {base}/v1/orgs\nor sign in to the dashboard at {base}/ with it.\n", app.admin_token);
                } else {
                    tracing::info!("generated an admin token, kept in {} (readable by this user only; not printed, as standard output is not a terminal): read it with `cat {}`", path.display(), path.display());
                }
            }
            AdminTokenSource::Stored(path) => {
                tracing::info!("using the admin token kept in {}", path.display());
            }
            AdminTokenSource::Configured => {}
        }
        if let (true, AdminTokenSource::Generated(path) | AdminTokenSource::Stored(path)) =
            (shared_database, &app.admin_token_source)
        {
            // Each node on one PostgreSQL database makes its own: behind a load balancer, a
            // token taken by one node is refused by the others.
            tracing::warn!(
                "this admin token is this node's own (other nodes on this database generate theirs): give every node the same one, HERALD_ADMIN_TOKEN=$(cat {})",
                path.display()
            );
        }
        #[cfg(unix)]
        tokio::spawn(answer_hangups());
        app::run(app, listener, shutdown_signal()).await
    })
}

/// File descriptors kept for everything but outgoing connections (in use or idle): SQLite's
/// files and readers, the API's connections, the runtime's own.
const FILES_BESIDES_REQUESTS: u64 = 512;

/// Raises the open-file limit to its hard maximum (a request in flight holds a connection, so
/// a common default of 1,024 would fail a large fan-out with "too many open files"), lowers
/// `HERALD_MAX_REQUESTS_IN_FLIGHT` to what the limit leaves room for, saying so, and gives the
/// rest to idle connections kept for reuse (four per request in flight at most): kept too few,
/// a fan-out to many receivers opens a new connection for most requests.
fn fit_requests_to_open_files(settings: &mut Settings) {
    let Some(limit) = raise_open_file_limit() else {
        return;
    };
    let wanted = settings.delivery.max_requests_in_flight;
    let (requests, idle) = connections_within(limit, wanted);
    if requests < wanted {
        tracing::warn!(
            open_file_limit = limit,
            "the open-file limit leaves room for {requests} requests in flight at once, not the {wanted} HERALD_MAX_REQUESTS_IN_FLIGHT asks; raise the limit (systemd LimitNOFILE=, ulimit -n) to send more at once"
        );
    }
    settings.delivery.max_requests_in_flight = requests;
    settings.delivery.max_idle_connections = Some(idle);
}

/// The requests in flight (at most `wanted`) and idle connections that fit `limit` open files:
/// each request may have a slow one beside it (the dispatcher moves requests unanswered after a
/// second to a second bound of the same size), and at least one idle connection, at most four.
fn connections_within(limit: u64, wanted: u32) -> (u32, u32) {
    let room = limit.saturating_sub(FILES_BESIDES_REQUESTS);
    let requests = (room / 3)
        .clamp(16, u64::from(wanted).max(16))
        .min(u64::from(wanted));
    let idle = room
        .saturating_sub(requests * 2)
        .clamp(requests, requests * 4);
    (requests as u32, idle.min(u64::from(u32::MAX)) as u32)
}

/// The open-file limit, raised to the hard maximum first if it was lower.
#[cfg(unix)]
fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let wanted = limit.maximum.unwrap_or(1 << 20);
    if limit.current.is_some_and(|current| current < wanted) {
        let raised = Rlimit {
            current: Some(wanted),
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "could not raise the open-file limit");
        }
    }
    Some(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

#[cfg(not(unix))]
fn raise_open_file_limit() -> Option<u64> {
    None
}

/// SIGHUP, which many daemons take as "reload your configuration": Herald reads its settings
/// only at start, and says so rather than ignore the signal without a word (or die of it).
#[cfg(unix)]
async fn answer_hangups() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::warn!(
            "SIGHUP received: Herald reads its settings only when it starts; restart it (SIGTERM, then start) to apply changes"
        );
    }
}

pub fn migrate(settings: MigrateSettings) -> anyhow::Result<()> {
    init_logging(&settings.logging)?;
    runtime()?.block_on(async move {
        // A mistyped data directory is not made: `serve` makes a new one.
        let data_dir = &settings.storage.data_dir;
        if settings.storage.database_url.is_none() && !data_dir.exists() {
            anyhow::bail!(
                "there is no data directory {}: `herald migrate` upgrades an existing database; \
                 check --data-dir (HERALD_DATA_DIR). (`herald serve` makes a new one, migrated.)",
                data_dir.display()
            );
        }
        // The keys before anything is written.
        app::cipher_of(&settings.encryption)?;
        let _lock = app::lock_database(&settings.storage).await?;
        let (_, created) =
            app::open_store_saying_if_new(&settings.storage, &settings.encryption, true).await?;
        // A mistyped --data-dir or database name must not pass for an upgraded database.
        let check = if settings.storage.database_url.is_some() {
            "If you meant an existing one, check --database-url (HERALD_DATABASE_URL)."
        } else {
            "If you meant an existing one, check --data-dir (HERALD_DATA_DIR)."
        };
        // Both backends' sequences have the same versions.
        let version = herald_store::migrations::SQLITE.len();
        match (settings.storage.database_url_for_display(), created) {
            (Some(url), true) => out!(
                "The database {url} held no Herald tables: created them, at the current \
                 schema (version {version}). {check}"
            ),
            (Some(url), false) => {
                out!("The database {url} is at the current schema (version {version}).")
            }
            (None, true) => out!(
                "There was no database in {}: created a new one, at the current schema \
                 (version {version}). {check}",
                settings.storage.data_dir.display()
            ),
            (None, false) => out!(
                "The database in {} is at the current schema (version {version}).",
                settings.storage.data_dir.display()
            ),
        }
        Ok(())
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let stop_at_once = match super::ctrl_c_or_sigterm().await {
        super::Signal::CtrlC => "Ctrl-C again",
        super::Signal::Term => "SIGINT (Ctrl-C)",
    };
    tracing::info!(
        "shutting down: no new requests; finishing deliveries in flight ({stop_at_once} to stop at once)"
    );
    // A second signal stops at once: what was in flight is sent again as after a crash (every
    // acknowledged event is already stored): at the next start on SQLite, when their leases
    // end on PostgreSQL.
    tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::warn!(
            "stopping at once (Ctrl-C while shutting down); deliveries cut off are sent again at the next start (SQLite) or when their leases end (PostgreSQL)"
        );
        std::process::exit(130);
    });
    // A supervisor or a person sending SIGTERM again hears that it changed nothing, and what
    // would (it went unanswered, as if the stop hung).
    #[cfg(unix)]
    tokio::spawn(async {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        while term.recv().await.is_some() {
            tracing::info!(
                "already shutting down (SIGTERM again): finishing deliveries in flight, within the stop's grace (HERALD_STOP_GRACE_SECONDS); SIGINT (Ctrl-C) stops at once"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_idle_connections_fit_the_open_file_limit() {
        // Plenty of room: the setting, and four idle connections per request.
        assert_eq!(connections_within(1 << 20, 1024), (1024, 4096));
        // Room for the requests and as many slow ones, not for four idle ones each: the rest
        // goes idle.
        assert_eq!(connections_within(4096, 1024), (1024, 1536));
        // Too little room: a slow request and one idle connection beside each request.
        assert_eq!(connections_within(1024, 1024), (170, 172));
        assert_eq!(connections_within(600, 1024), (29, 30));
        // Never fewer than 16 requests, whatever the limit.
        assert_eq!(connections_within(100, 1024).0, 16);
        assert_eq!(connections_within(1 << 20, 8).0, 8);
    }
}
