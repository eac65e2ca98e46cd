//! Who is calling: the admin (one token for the whole server) or one organization's API key.
//! Keys are kept only as SHA-256 hashes; both kinds are compared without timing leaks.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use herald_core::org::{ApiKey, KeyRole};
use herald_core::store::Store;
use herald_core::{ApiKeyId, OrgId};

use super::cancel_safe::to_the_end;
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
            Scope::Org(_) => Err(ServiceError::Forbidden),
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
}

/// Keys seen, by hash, with their organization and role. Every forgetting bumps `generation`,
/// so that a lookup that started before a key was deleted cannot put the key back when it ends.
#[derive(Default)]
struct KeyCache {
    by_hash: HashMap<String, (OrgId, KeyRole)>,
    generation: u64,
}

impl Authenticator {
    pub fn new(admin_token: &str, store: Arc<dyn Store>) -> Self {
        Self {
            admin_hash: Sha256::digest(admin_token.as_bytes()).into(),
            store,
            keys: RwLock::default(),
        }
    }

    /// What the token reaches and what it may do there (the admin token: everything, as a
    /// manager); `None` when the token is unknown.
    pub async fn resolve(&self, token: &str) -> ServiceResult<Option<(Scope, KeyRole)>> {
        self.resolve_digest(&TokenDigest::of(token)).await
    }

    /// Like [`Authenticator::resolve`], from a token's digest: the dashboard's sessions keep
    /// only that, and check it again on every request so that a deleted key ends them.
    pub async fn resolve_digest(
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
