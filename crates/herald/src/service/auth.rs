//! Who is calling: the admin (one token for the whole server) or one organization's API key.
//! Keys are kept only as SHA-256 hashes; both kinds are compared without timing leaks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use herald_core::org::{ApiKey, KeyRole};
use herald_core::store::Store;
use herald_core::{ApiKeyId, OrgId};

use super::cancel_safe::to_the_end;
use super::token_failures::{Check, Network, Owner, Pass, TokenFailures};
use super::{ServiceError, ServiceResult};
use crate::app::AppState;

/// The prefix of organization API keys, so that a leaked key is recognisable.
pub const API_KEY_PREFIX: &str = "hk_";

/// What the caller may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Org(OrgId),
}

impl Scope {
    /// Admits the caller to `org`. Another organization's data answers "not found", never
    /// "forbidden", so that ids cannot be probed.
    pub fn check_org(&self, org: &OrgId) -> ServiceResult<()> {
        match self {
            Scope::Admin => Ok(()),
            Scope::Org(own) if own == org => Ok(()),
            Scope::Org(_) => Err(ServiceError::NotFound("organization")),
        }
    }

    pub fn require_admin(&self) -> ServiceResult<()> {
        match self {
            Scope::Admin => Ok(()),
            Scope::Org(_) => Err(ServiceError::Forbidden(
                "this operation needs the admin token, not an organization API key",
            )),
        }
    }
}

/// What is kept of a token to resolve it again later: its SHA-256 and whether it looks like an
/// organization key. Not the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDigest {
    hash: [u8; 32],
    api_key: bool,
}

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        Self {
            hash: Sha256::digest(token.as_bytes()).into(),
            api_key: token.starts_with(API_KEY_PREFIX),
        }
    }
}

/// Resolves bearer tokens. Known keys are cached by hash; deleting a key forgets it.
pub struct Authenticator {
    admin_hash: [u8; 32],
    store: Arc<dyn Store>,
    keys: RwLock<KeyCache>,
    failures: TokenFailures,
}

/// Keys seen, by hash, with their organization and role. Every forgetting bumps `generation`,
/// so that a lookup that started before a key was deleted cannot put the key back when it ends.
#[derive(Default)]
struct KeyCache {
    by_hash: HashMap<String, (OrgId, KeyRole)>,
    generation: u64,
}

impl Authenticator {
    /// `failures_per_minute`: how many tokens that are not valid one client network may
    /// present a minute before its new tokens are held back ([`TokenFailures`]; 0: no limit).
    pub fn new(admin_token: &str, store: Arc<dyn Store>, failures_per_minute: u32) -> Self {
        Self {
            admin_hash: Sha256::digest(admin_token.as_bytes()).into(),
            store,
            keys: RwLock::default(),
            failures: TokenFailures::new(failures_per_minute),
        }
    }

    /// The counts of tokens refused and held back, for `/metrics`.
    pub fn failures(&self) -> &TokenFailures {
        &self.failures
    }

    /// A token a client sent, to be resolved within its network's allowance for tokens that
    /// are not valid: `Err` when that is spent and the token was not admitted from there
    /// before, so it is not checked at all. `client` is the request's client
    /// (`http_server::client_address`; `None` where a request came another way, as in tests:
    /// no allowance then).
    pub fn present(&self, client: Option<IpAddr>, token: &str) -> Result<Presented<'_>, HeldBack> {
        let digest = TokenDigest::of(token);
        let counted = match client.map(Network::of) {
            None => None,
            Some(network) => match self.failures.check(network, &digest.hash) {
                Check::Go(pass) => Some((network, pass)),
                Check::Wait(retry_after) => {
                    return Err(HeldBack {
                        network,
                        retry_after,
                        per_minute: self.failures.per_minute(),
                    });
                }
            },
        };
        Ok(Presented {
            auth: self,
            counted,
            empty: token.is_empty(),
            settled: false,
            digest,
        })
    }

    /// What a token (its digest) reaches and what it may do there (the admin token:
    /// everything, as a manager); `None` when the token is unknown. Requests' tokens come
    /// through [`Authenticator::present`]; the dashboard's sessions keep only the digest, and
    /// check it again on every request so that a deleted key ends them.
    async fn resolve_digest(
        &self,
        digest: &TokenDigest,
    ) -> ServiceResult<Option<(Scope, KeyRole)>> {
        let hash = digest.hash;
        if bool::from(hash.ct_eq(&self.admin_hash)) {
            return Ok(Some((Scope::Admin, KeyRole::Manager)));
        }
        if !digest.api_key {
            return Ok(None);
        }
        let hex_hash = hex::encode(hash);
        let generation = {
            let cache = self.keys.read().expect("key cache lock");
            if let Some((org, role)) = cache.by_hash.get(&hex_hash) {
                return Ok(Some((Scope::Org(org.clone()), *role)));
            }
            cache.generation
        };
        let found = self
            .store
            .find_api_key(&hex_hash)
            .await
            .map_err(ServiceError::from_store("api key"))?;
        Ok(found.map(|key| {
            let mut cache = self.keys.write().expect("key cache lock");
            if cache.generation == generation {
                cache
                    .by_hash
                    .insert(hex_hash, (key.org_id.clone(), key.role));
            }
            (Scope::Org(key.org_id), key.role)
        }))
    }

    /// What a dashboard session keeps of the token that signed it in (`session` is its id):
    /// an API key's hash, as the key's own row has it; for the admin token, a hash of the
    /// token's hash with the session id, which the store does not have, so that a copy of the
    /// database offers nothing to test guesses of the admin token against.
    pub fn session_credential(&self, session: &str, digest: &TokenDigest, scope: &Scope) -> String {
        match scope {
            Scope::Admin => format!(
                "{ADMIN_CREDENTIAL}{}",
                admin_session_check(session, &digest.hash)
            ),
            Scope::Org(_) => format!("{KEY_CREDENTIAL}{}", hex::encode(digest.hash)),
        }
    }

    /// Resolves what a session keeps ([`Authenticator::session_credential`]) as
    /// [`Authenticator::resolve_digest`] does a token: again on every request, so that a
    /// deleted key or a changed admin token ends the sessions it signed in.
    pub async fn resolve_session(
        &self,
        session: &str,
        credential: &str,
    ) -> ServiceResult<Option<(Scope, KeyRole)>> {
        if let Some(check) = credential.strip_prefix(ADMIN_CREDENTIAL) {
            let expected = admin_session_check(session, &self.admin_hash);
            return Ok(bool::from(check.as_bytes().ct_eq(expected.as_bytes()))
                .then_some((Scope::Admin, KeyRole::Manager)));
        }
        let Some(hash) = credential
            .strip_prefix(KEY_CREDENTIAL)
            .and_then(|h| <[u8; 32]>::try_from(hex::decode(h).ok()?).ok())
        else {
            return Ok(None);
        };
        let digest = TokenDigest {
            hash,
            api_key: true,
        };
        match self.resolve_digest(&digest).await? {
            // The admin token that happens to look like an API key signs in as the admin,
            // with the admin's kind of credential; one kept as a key's is not it.
            Some((Scope::Admin, _)) => Ok(None),
            other => Ok(other),
        }
    }

    fn forget_org_keys(&self, org: &OrgId) {
        let mut cache = self.keys.write().expect("key cache lock");
        cache.by_hash.retain(|_, (o, _)| o != org);
        cache.generation += 1;
    }

    fn forget_all_keys(&self) {
        let mut cache = self.keys.write().expect("key cache lock");
        cache.by_hash.clear();
        cache.generation += 1;
    }
}

/// A token a client sent, let through its network's allowance ([`Authenticator::present`]).
/// Resolving it counts it as admitted or failed from that network; dropped unresolved (the
/// request given up, the database failing), what its network's allowance held for it is
/// given back.
pub struct Presented<'a> {
    auth: &'a Authenticator,
    /// The client's network and how the token was let through; `None`: not counted.
    counted: Option<(Network, Pass)>,
    empty: bool,
    settled: bool,
    digest: TokenDigest,
}

impl Presented<'_> {
    /// What the token reaches (as [`Authenticator::resolve_digest`]); a token that is not
    /// valid counts against its network's allowance (an empty one does not: nothing was
    /// guessed).
    pub async fn resolve(self) -> ServiceResult<Option<(Scope, KeyRole)>> {
        let resolved = self.auth.resolve_digest(&self.digest).await?;
        if let Some((scope, _)) = &resolved {
            self.admitted(match scope {
                Scope::Admin => Owner::Operator,
                Scope::Org(org) => Owner::org(org.as_str()),
            });
        } else if !self.empty {
            self.failed();
        }
        Ok(resolved)
    }

    /// The token, `owner`'s, was taken (here or by other means, as the metrics token is): it
    /// passes its network's allowance from now on.
    pub fn admitted(mut self, owner: Owner) {
        self.settled = true;
        if let Some((network, pass)) = self.counted {
            self.auth
                .failures
                .admitted(network, &self.digest.hash, pass, owner);
        }
    }

    /// The token was not valid for what it was sent to.
    pub fn failed(mut self) {
        self.settled = true;
        let Some((network, pass)) = self.counted else {
            self.auth.failures.invalid.add(1);
            return;
        };
        if self.auth.failures.failed(network, &self.digest.hash, pass) {
            // Once per 10 s at most: a guesser spends its allowance again each time a
            // failure's worth has refilled.
            static SPENT: herald_core::throttle::Throttle =
                herald_core::throttle::Throttle::new(Duration::from_secs(10));
            if let Some(held_back) = SPENT.admit() {
                tracing::warn!(
                    network = %network,
                    per_minute = self.auth.failures.per_minute(),
                    spent_since_last_line = held_back,
                    "a client network sent more tokens that are not valid than \
                     HERALD_TOKEN_FAILURES_PER_MINUTE allows: its new tokens are answered 429 \
                     unchecked until its allowance refills; tokens already used from there \
                     still pass"
                );
            }
        }
    }

    pub fn digest(&self) -> &TokenDigest {
        &self.digest
    }
}

impl Drop for Presented<'_> {
    fn drop(&mut self) {
        if !self.settled
            && let Some((network, pass)) = self.counted
        {
            self.auth.failures.unsettled(network, pass);
        }
    }
}

/// A token not checked: its network has sent too many that were not valid.
#[derive(Debug, Clone, Copy)]
pub struct HeldBack {
    pub network: Network,
    pub retry_after: Duration,
    pub per_minute: u32,
}

impl HeldBack {
    /// Whole seconds for `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs().max(1)
    }

    /// What the client is told, for the API and the dashboard alike.
    pub fn message(&self) -> String {
        format!(
            "more tokens that are not valid came from {} than the {} a minute Herald checks \
             (HERALD_TOKEN_FAILURES_PER_MINUTE), so for {} s tokens not used from there before \
             are refused without being checked. Send an admin token or current API key after \
             that; if yours is one, the failures may be another client's at the same address \
             (behind a proxy, see HERALD_TRUSTED_PROXIES)",
            self.network,
            self.per_minute,
            self.retry_after_secs()
        )
    }
}

/// How a session's credential starts: signed in with the admin token, or with an API key.
const ADMIN_CREDENTIAL: &str = "admin:";
const KEY_CREDENTIAL: &str = "key:";

/// Whether a session's credential is the admin token's: each node checks it against its own
/// token, so one refused by a node may still be good on another (during a rolling change of the
/// token), unlike a deleted key's.
pub fn is_admin_credential(credential: &str) -> bool {
    credential.starts_with(ADMIN_CREDENTIAL)
}

/// The hash of the API key a session signed in with (as the key's row keeps it), or `None` for
/// the admin token's: the dashboard marks that key, whose revocation ends the session too.
pub fn session_key_hash(credential: &str) -> Option<&str> {
    credential.strip_prefix(KEY_CREDENTIAL)
}

/// Binds the admin token's hash to one session id.
fn admin_session_check(session: &str, admin_hash: &[u8; 32]) -> String {
    hex::encode(
        Sha256::new()
            .chain_update(session.as_bytes())
            .chain_update(admin_hash)
            .finalize(),
    )
}

/// The most API keys one organization may have: they are listed whole, never paged.
const MAX_API_KEYS_PER_ORG: usize = 100;

/// A new API key: the record to store and the key itself, shown once.
pub async fn create_api_key(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    name: &str,
    role: KeyRole,
) -> ServiceResult<(ApiKey, String)> {
    scope.check_org(org)?;
    let name = herald_core::org::parse_name(name, "name")?;
    let looks_like_id = ApiKeyId::parse(&name).is_ok();
    let name = herald_core::org::refuse_id_form(name, looks_like_id, "an API key")?;
    state
        .directory
        .snapshot(org)
        .await
        .map_err(ServiceError::from_store("organization"))?;
    // Checked before the write, as the caps on webhooks and event types are.
    let existing = state
        .store
        .list_api_keys(org)
        .await
        .map_err(ServiceError::from_store("organization"))?;
    if existing.len() >= MAX_API_KEYS_PER_ORG {
        return Err(ServiceError::Conflict(format!(
            "the organization already has {MAX_API_KEYS_PER_ORG} API keys, the most one may \
             have; delete those no producer uses any more"
        )));
    }
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("{API_KEY_PREFIX}{}", hex::encode(secret));
    let record = ApiKey {
        id: ApiKeyId::generate(),
        org_id: org.clone(),
        name,
        prefix: key[..API_KEY_PREFIX.len() + 6].to_owned(),
        key_hash: hex::encode(Sha256::digest(key.as_bytes())),
        role,
        created_at: state.clock.now(),
    };
    state
        .store
        .create_api_key(&record)
        .await
        .map_err(ServiceError::from_store("organization"))?;
    // The prefix only: it tells keys apart in the list, and cannot be used.
    tracing::info!(org = %org, key = %record.id, prefix = record.prefix, role = role.as_str(), "API key created");
    Ok((record, key))
}

pub async fn list_api_keys(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
) -> ServiceResult<Vec<ApiKey>> {
    super::org_snapshot(state, scope, org).await?;
    state
        .store
        .list_api_keys(org)
        .await
        .map_err(ServiceError::from_store("organization"))
}

pub async fn delete_api_key(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &ApiKeyId,
) -> ServiceResult<()> {
    scope.check_org(org)?;
    let (org, id) = (org.clone(), id.clone());
    // A key revoked in the store but still cached would go on being admitted here.
    to_the_end(state, |state| async move {
        state
            .store
            .delete_api_key(&org, &id)
            .await
            .map_err(ServiceError::from_store("api key"))?;
        state.auth.forget_org_keys(&org);
        tracing::info!(org = %org, key = %id, "API key revoked");
        Ok(())
    })
    .await
}

/// Called when an organization is deleted, or another node changed it (a key may be revoked).
pub fn forget_org(state: &AppState, org: &OrgId) {
    state.auth.forget_org_keys(org);
}

/// Called when this node may have missed other nodes' changes.
pub fn forget_all(state: &AppState) {
    state.auth.forget_all_keys();
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Timestamp;

    fn authenticator(admin_token: &str, dir: &std::path::Path) -> Authenticator {
        let store = herald_store::SqliteStore::open(dir.join("herald.db")).unwrap();
        Authenticator::new(admin_token, Arc::new(store), 30)
    }

    #[tokio::test]
    async fn a_session_credential_resolves_for_its_own_session_and_token_only() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator("admin-token", dir.path());
        let (session, other) = ("a".repeat(64), "b".repeat(64));
        let admin =
            auth.session_credential(&session, &TokenDigest::of("admin-token"), &Scope::Admin);
        assert!(!admin.contains(&hex::encode(Sha256::digest(b"admin-token"))));
        assert_eq!(
            auth.resolve_session(&session, &admin).await.unwrap(),
            Some((Scope::Admin, KeyRole::Manager))
        );
        assert_eq!(auth.resolve_session(&other, &admin).await.unwrap(), None);
        // After a restart with another admin token, the admin's sessions have ended.
        let changed = authenticator("new-admin-token", dir.path());
        assert_eq!(
            changed.resolve_session(&session, &admin).await.unwrap(),
            None
        );

        // An API key's: resolved while the key exists.
        let org = OrgId::from_trusted("org_acme".into());
        let key = "hk_0123456789abcdef";
        let digest = TokenDigest::of(key);
        let kept = auth.session_credential(&session, &digest, &Scope::Org(org.clone()));
        assert_eq!(auth.resolve_session(&session, &kept).await.unwrap(), None);
        auth.store
            .create_org(&herald_core::org::Organization {
                id: org.clone(),
                name: "Acme".into(),
                handle: herald_core::org::OrgHandle::parse("acme").unwrap(),
                catalogs: Vec::new(),
                created_at: Timestamp::from_millis(0),
                updated_at: Timestamp::from_millis(0),
            })
            .await
            .unwrap();
        auth.store
            .create_api_key(&ApiKey {
                id: ApiKeyId::generate(),
                org_id: org.clone(),
                name: "ops".into(),
                prefix: key[..9].into(),
                key_hash: hex::encode(Sha256::digest(key.as_bytes())),
                role: KeyRole::Manager,
                created_at: Timestamp::from_millis(0),
            })
            .await
            .unwrap();
        assert_eq!(
            auth.resolve_session(&other, &kept).await.unwrap(),
            Some((Scope::Org(org), KeyRole::Manager))
        );
        for forged in ["admin:", "key:zz", "key:", "other", &kept[..20]] {
            assert_eq!(
                auth.resolve_session(&session, forged).await.unwrap(),
                None,
                "{forged}"
            );
        }
    }
}
