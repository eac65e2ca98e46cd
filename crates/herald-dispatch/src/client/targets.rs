//! Each webhook URL parsed and checked against the address policy once, with the idle
//! connections of its origin; and the sweep that closes the connections gone stale.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foldhash::HashMap;
use http::header::HeaderValue;

use herald_core::address_policy::AddressPolicy;
use herald_core::delivery::AttemptError;

use super::pool::{self, Origin};
use crate::guard::{Blocked, check_parsed_url};

/// A webhook URL, parsed and checked against the address policy once, with what each request
/// to it needs.
pub(super) struct Target {
    /// The URL as a URI, for the connector (scheme, host, port).
    pub(super) uri: http::Uri,
    /// What the request line carries: the path and query.
    pub(super) path: http::Uri,
    /// The `Host` header: the host, and the port unless it is the scheme's default.
    pub(super) host: HeaderValue,
    /// Idle connections to the URL's origin, shared with every URL of that origin.
    pub(super) origin: Arc<Origin>,
}

/// Each webhook URL already parsed and checked against the address policy, with its origin's
/// connections. Parsing a URL (twice: as a URL for the check, then as the request's URI) cost
/// more instructions than rendering and building the rest of the request, for every attempt,
/// while the answer depends only on the URL and the policy, which never changes for a client.
/// Tenants choose the URLs; the maps' hash (foldhash) is seeded per process, so collisions
/// cannot be planned, and they hold at most `MAX_TARGETS`, which bounds what they could cost.
pub(super) struct Targets {
    known: Mutex<Known>,
    /// Idle connections kept across the origins (`pool::MAX_IDLE_TOTAL` at most).
    pub(super) idle: Arc<pool::IdleCount>,
}

#[derive(Default)]
struct Known {
    /// By URL, for requests with lower-case header names, then for Title-Case ones.
    targets: [HashMap<String, Result<Arc<Target>, AttemptError>>; 2],
    /// By scheme and authority, and header case: every URL of one origin shares its
    /// connections.
    origins: HashMap<(String, bool), Arc<Origin>>,
}

/// URLs remembered at most; past it the memory is cleared (webhooks are few, URLs rarely
/// change). Connections in use finish their requests; idle ones close.
pub(super) const MAX_TARGETS: usize = 4096;

impl Targets {
    /// No URL known yet, and up to `idle` idle connections kept across the origins.
    pub(super) fn keeping_idle(idle: usize) -> Self {
        Self {
            known: Mutex::default(),
            idle: Arc::new(pool::IdleCount::capped(idle)),
        }
    }

    /// Where to send for `url` a request whose header names are in Title-Case or not, or why
    /// nothing may be sent to it.
    pub(super) fn target(
        &self,
        policy: &AddressPolicy,
        url: &str,
        title_case_headers: bool,
    ) -> Result<Arc<Target>, AttemptError> {
        let case = usize::from(title_case_headers);
        if let Some(known) = self.known.lock().expect("targets lock").targets[case].get(url) {
            return known.clone();
        }
        let resolved = resolve_target(policy, url);
        let mut known = self.known.lock().expect("targets lock");
        if known.targets[case].len() >= MAX_TARGETS {
            known.targets = Default::default();
            known.origins.clear();
        }
        let target = resolved.map(|(uri, path, host)| {
            let origin_key = format!(
                "{}://{}",
                uri.scheme_str().unwrap_or(""),
                host_and_port(&uri)
            );
            let origin = known
                .origins
                .entry((origin_key, title_case_headers))
                .or_insert_with(|| {
                    Arc::new(Origin::counted_in(self.idle.clone(), title_case_headers))
                })
                .clone();
            Arc::new(Target {
                uri,
                path,
                host,
                origin,
            })
        });
        known.targets[case].insert(url.to_owned(), target.clone());
        target
    }

    /// Closes every origin's stale idle connections (see `Origin::close_stale`).
    pub(super) fn close_stale(&self, now: Instant) {
        let origins: Vec<Arc<Origin>> = self
            .known
            .lock()
            .expect("targets lock")
            .origins
            .values()
            .cloned()
            .collect();
        for origin in origins {
            origin.close_stale(now);
        }
    }
}

/// How often idle connections are swept: soon after they go stale (`pool::IDLE_TIMEOUT`), so
/// that origins nothing more is sent to give their descriptors back.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Sweeps the client's idle connections every `SWEEP_EVERY` until the client is gone. Without
/// it, an endpoint that receives nothing more would keep up to `MAX_IDLE` connections (and as
/// many file descriptors) open for as long as its server tolerates idle ones.
pub(super) async fn close_stale_connections(targets: std::sync::Weak<Targets>) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(targets) = targets.upgrade() else {
            return;
        };
        targets.close_stale(Instant::now());
    }
}

/// Parses `url`, checks its host against `policy`, and turns it into the request's URI, its
/// origin-form and its `Host` header: the URL sent is the URL checked.
pub(super) fn resolve_target(
    policy: &AddressPolicy,
    url: &str,
) -> Result<(http::Uri, http::Uri, HeaderValue), AttemptError> {
    let invalid = |e: &dyn std::fmt::Display| AttemptError::Request(e.to_string());
    let parsed = url::Url::parse(url)
        .map_err(|_| Blocked("the URL does not parse".into()))
        .and_then(|parsed| check_parsed_url(policy, &parsed).map(|()| parsed))
        .map_err(|blocked| AttemptError::Blocked(blocked.0))?;
    let uri = http::Uri::try_from(parsed.as_str()).map_err(|e| invalid(&e))?;
    let path = match uri.path_and_query() {
        Some(path) => http::Uri::try_from(path.as_str()).map_err(|e| invalid(&e))?,
        None => http::Uri::from_static("/"),
    };
    let host = HeaderValue::try_from(host_and_port(&uri)).map_err(|e| invalid(&e))?;
    Ok((uri, path, host))
}

/// `host`, or `host:port` when the port is not the scheme's default (as `Host` carries it).
pub(super) fn host_and_port(uri: &http::Uri) -> String {
    let host = uri.host().unwrap_or_default();
    let default = match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    match uri.port_u16() {
        Some(port) if Some(port) != default => format!("{host}:{port}"),
        _ => host.to_owned(),
    }
}
