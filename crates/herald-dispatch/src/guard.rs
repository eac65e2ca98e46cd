//! The SSRF guard on every outgoing request. Names are resolved here and only permitted
//! addresses are handed to the connector, so the address checked is the address connected to
//! (no DNS rebinding between check and connect). IP literals never reach a resolver, so
//! [`check_url`] checks them before a request starts.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::dns::Name;

use herald_core::address_policy::AddressPolicy;

/// The error a refused address produces; recognised in the client's error chain.
#[derive(Debug)]
pub struct Blocked(pub String);

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Blocked {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How many names are resolved at once. The system resolver runs on tokio's blocking threads,
/// which SQLite's reads share; a name whose DNS server never answers holds one for as long as
/// the resolver's own timeouts (5 s per try by default). Bounded, a tenant's webhooks on such
/// names wait for a turn (within their attempt's timeout) instead of taking every thread. The
/// price: names that never answer, while they hold most turns, slow other webhooks' new
/// connections (kept-alive ones are not concerned).
pub(crate) const MAX_LOOKUPS_IN_FLIGHT: usize = 32;

/// A resolver that drops every address the policy refuses, and fails when none is left. The
/// connector calls it for every host name (IP literals are checked by [`check_url`]).
#[derive(Clone)]
pub(crate) struct GuardedResolver {
    pub(crate) policy: Arc<AddressPolicy>,
    /// Turns to resolve a name ([`MAX_LOOKUPS_IN_FLIGHT`]).
    pub(crate) lookups: Arc<tokio::sync::Semaphore>,
}

impl GuardedResolver {
    pub(crate) fn new(policy: Arc<AddressPolicy>) -> Self {
        Self {
            policy,
            lookups: Arc::new(tokio::sync::Semaphore::new(MAX_LOOKUPS_IN_FLIGHT)),
        }
    }

    /// Resolves `host` with the system resolver, in one of the [`MAX_LOOKUPS_IN_FLIGHT`] turns.
    async fn resolve(&self, host: String) -> Result<Vec<SocketAddr>, BoxError> {
        // The semaphore is never closed.
        let turn = self.lookups.clone().acquire_owned().await?;
        // The turn goes with the blocking task, not with this future: a caller that stops
        // waiting (an attempt's timeout) leaves the thread busy until the system resolver
        // gives up, and until then the turn stays taken.
        let resolved = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), 0))
        })
        .await??;
        Ok(resolved.collect())
    }

    /// Why `host` would be refused at delivery: every address it resolves to is one the policy
    /// refuses. `None` when one is permitted, or when it does not resolve within `wait` (a
    /// delivery checks again each time it connects).
    pub(crate) async fn refused_name(&self, host: &str, wait: Duration) -> Option<Blocked> {
        let resolved = tokio::time::timeout(wait, self.resolve(host.to_owned()))
            .await
            .ok()?
            .ok()?;
        let kinds: Vec<Option<&str>> = resolved
            .iter()
            .map(|a| self.policy.refused_kind(a.ip()))
            .collect();
        match kinds.first() {
            Some(Some(kind)) if kinds.iter().all(Option::is_some) => {
                Some(Blocked(refused_name_message(host, kind)))
            }
            _ => None,
        }
    }
}

/// The words for a name that resolves only to refused addresses. They are stored with the
/// attempt and shown to the organization, so they name the kind of address but not the
/// address: a tenant must not be able to map the internal network by registering names that
/// resolve into it.
fn refused_name_message(host: &str, kind: &str) -> String {
    format!(
        "{host} resolves to {} address; Herald delivers only to public addresses unless the \
         server's operator allows that network (HERALD_ALLOW_PRIVATE_NETWORKS)",
        herald_core::address_policy::a_kind(kind)
    )
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved = resolver.resolve(host.clone()).await?;
            let policy = &resolver.policy;
            let mut refused = None;
            let permitted: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.refused_kind(addr.ip()) {
                    None => true,
                    Some(kind) => {
                        refused.get_or_insert(kind);
                        false
                    }
                })
                .collect();
            if permitted.is_empty() {
                let why = match refused {
                    Some(kind) => refused_name_message(&host, kind),
                    None => format!("{host} resolves to no address"),
                };
                return Err(Box::new(Blocked(why)) as BoxError);
            }
            Ok(permitted.into_iter())
        })
    }
}

/// Checks a URL's host when it is an IP literal (or `localhost`); a URL that does not parse is
/// refused, since nothing can be said of where it leads.
pub fn check_url(policy: &AddressPolicy, url: &str) -> Result<(), Blocked> {
    match url::Url::parse(url) {
        Ok(parsed) => check_parsed_url(policy, &parsed),
        Err(e) => Err(Blocked(format!("the URL does not parse ({e})"))),
    }
}

/// [`check_url`] for a URL already parsed (a delivery parses its URL once, for this and for
/// the request).
pub fn check_parsed_url(policy: &AddressPolicy, url: &url::Url) -> Result<(), Blocked> {
    policy
        .check_host(url.host_str().unwrap_or_default())
        .map_err(Blocked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_refused_by_their_literal_host_or_when_they_do_not_parse() {
        let policy = AddressPolicy::default();
        assert!(check_url(&policy, "https://example.com/hook").is_ok());
        assert!(check_url(&policy, "http://[::127.0.0.1]/").is_err());
        assert!(check_url(&policy, "http://[2002:a9fe:a9fe::]/latest").is_err());
        let Blocked(why) = check_url(&policy, "http://[::1").unwrap_err();
        assert!(why.contains("does not parse"), "{why}");
    }

    /// Every lookup turn of `resolver`, as names that never answer would hold them.
    async fn every_turn(resolver: &GuardedResolver) -> tokio::sync::OwnedSemaphorePermit {
        resolver
            .lookups
            .clone()
            .acquire_many_owned(MAX_LOOKUPS_IN_FLIGHT as u32)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_name_is_refused_ahead_only_when_all_its_addresses_are_and_in_a_turn() {
        let wait = Duration::from_secs(2);
        let resolver = GuardedResolver::new(Arc::new(AddressPolicy::default()));
        let Blocked(why) = resolver.refused_name("localhost", wait).await.unwrap();
        assert!(
            why.starts_with("localhost resolves to a loopback address; Herald delivers only"),
            "{why}"
        );
        let allowed = AddressPolicy::parse(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap();
        let allowed = GuardedResolver::new(Arc::new(allowed));
        assert!(allowed.refused_name("localhost", wait).await.is_none());
        // With every turn taken it waits for one, and past `wait` lets the name through (each
        // delivery checks it again).
        let taken = every_turn(&resolver).await;
        let short = Duration::from_millis(100);
        assert!(resolver.refused_name("localhost", short).await.is_none());
        drop(taken);
        assert!(resolver.refused_name("localhost", wait).await.is_some());
    }

    #[tokio::test]
    async fn a_name_waits_for_a_turn_when_every_lookup_is_taken() {
        use std::str::FromStr;
        use tower_service::Service;
        let allow_loopback =
            AddressPolicy::parse(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap();
        let mut resolver = GuardedResolver::new(Arc::new(allow_loopback));
        let taken = every_turn(&resolver).await;
        let name = Name::from_str("localhost").unwrap();
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            resolver.call(name.clone()),
        )
        .await;
        assert!(waiting.is_err(), "it resolved without a turn");
        drop(taken);
        let addrs: Vec<SocketAddr> = resolver.call(name).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
        assert_eq!(resolver.lookups.available_permits(), MAX_LOOKUPS_IN_FLIGHT);
    }
}
