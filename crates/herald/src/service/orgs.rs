//! Organizations: create, read, change (name, handle, catalogs), delete.

use herald_core::catalog::{CatalogName, CatalogSetError, parse_catalog_set};
use herald_core::org::{OrgHandle, Organization, parse_name};
use herald_core::store::StoreError;
use herald_core::{OrgId, Page, PageRequest, WebhookId};

use super::cancel_safe::{to_the_end, write_then_forget};
use super::{Scope, ServiceError, ServiceResult};
use crate::app::AppState;

/// How many handles creating an organization tries when the one derived from its name is taken.
const HANDLE_TRIES: u32 = 16;

/// Why an organization API key may not change its organization's handle.
pub const HANDLE_IS_THE_OPERATORS: &str = "an organization's handle is changed only with the admin token: handles name organizations across the server (the CLI's --org, WebSub topics), so one an organization took could be the one the operator means for another. Leave `handle` out (or as it is) to change the rest";

#[derive(Debug, Default)]
pub struct OrgInput {
    pub name: Option<String>,
    pub handle: Option<String>,
    pub catalogs: Option<Vec<String>>,
}

fn catalogs(raw: &[String]) -> ServiceResult<Vec<CatalogName>> {
    parse_catalog_set(raw).map_err(|e| match e {
        CatalogSetError::Invalid(i) => ServiceError::Invalid(i),
        CatalogSetError::Conflict(m) => ServiceError::Conflict(m),
    })
}

pub async fn create(
    state: &AppState,
    scope: &Scope,
    input: OrgInput,
) -> ServiceResult<Organization> {
    scope.require_admin()?;
    let name = parse_name(
        input
            .name
            .as_deref()
            .ok_or_else(|| herald_core::Invalid::new("name", "is required"))?,
        "name",
    )?;
    let derived = input.handle.is_none();
    let handle = match input.handle {
        Some(h) => OrgHandle::parse(&h)?,
        None => OrgHandle::from_name(&name),
    };
    let catalogs = match input.catalogs {
        Some(c) => catalogs(&c)?,
        None => CatalogName::default_set(),
    };
    let now = state.clock.now();
    let mut org = Organization {
        id: OrgId::generate(),
        name,
        handle: handle.clone(),
        catalogs,
        created_at: now,
        updated_at: now,
    };
    // A handle derived from the name is numbered when taken (`acme-2`, `acme-3`…): names repeat,
    // and names in other scripts all derive `org`. A handle given is the caller's to change.
    // Past the first few numbers, a random one: each try is a write.
    let mut tries = 1;
    loop {
        match state.store.create_org(&org).await {
            Err(StoreError::Conflict(_)) if derived && tries < HANDLE_TRIES => {
                tries += 1;
                let n = if tries <= 9 {
                    tries
                } else {
                    rand::random_range(10_000..100_000)
                };
                org.handle = handle.numbered(n);
            }
            Err(StoreError::Conflict(_)) if derived => {
                return Err(ServiceError::Conflict(format!(
                    "no free handle could be derived from the name '{}'; choose one and send it as `handle`",
                    org.name
                )));
            }
            done => break done.map_err(ServiceError::from_store("organization"))?,
        }
    }
    tracing::info!(org = %org.id, handle = org.handle.as_str(), "organization created");
    Ok(org)
}

pub async fn list(
    state: &AppState,
    scope: &Scope,
    page: PageRequest,
) -> ServiceResult<Page<Organization>> {
    match scope {
        Scope::Admin => state
            .store
            .list_orgs(&page)
            .await
            .map_err(ServiceError::from_store("organization")),
        // A key sees exactly its own organization.
        Scope::Org(own) => Ok(Page {
            data: vec![get(state, scope, own).await?],
            next_cursor: None,
        }),
    }
}

pub async fn get(state: &AppState, scope: &Scope, id: &OrgId) -> ServiceResult<Organization> {
    let snapshot = super::org_snapshot(state, scope, id).await?;
    Ok(snapshot.org.clone())
}

pub async fn update(
    state: &AppState,
    scope: &Scope,
    id: &OrgId,
    input: OrgInput,
) -> ServiceResult<Organization> {
    // Its catalogs are checked against its own types and webhooks, then written: one change at
    // a time.
    let (scope, org) = (scope.clone(), id.clone());
    super::one_change_at_a_time(state, id, move |state| async move {
        update_checked(&state, &scope, &org, input).await
    })
    .await
}

async fn update_checked(
    state: &AppState,
    scope: &Scope,
    id: &OrgId,
    input: OrgInput,
) -> ServiceResult<Organization> {
    let snapshot = super::org_snapshot(state, scope, id).await?;
    let mut org = snapshot.org.clone();
    if let Some(name) = input.name {
        org.name = parse_name(&name, "name")?;
    }
    // The handle it has is kept as it is, even if today's rules would not take it (forms send
    // it back with every change).
    if let Some(handle) = input.handle
        && handle != org.handle.as_str()
    {
        // Handles name organizations across the server (the CLI's `--org`, WebSub topics): one
        // an organization took for itself could be the one the operator gives the next.
        if *scope != Scope::Admin {
            return Err(ServiceError::Forbidden(HANDLE_IS_THE_OPERATORS));
        }
        org.handle = OrgHandle::parse(&handle)?;
    }
    if let Some(raw) = input.catalogs {
        org.catalogs = catalogs(&raw)?;
        for catalog in org.catalogs.iter().filter_map(|c| c.catalog()) {
            if let Some(t) = catalog
                .types
                .iter()
                .find(|t| snapshot.has_custom_type(&t.name))
            {
                return Err(ServiceError::Conflict(format!(
                    "the catalog '{}' defines '{}', which this organization registered as its own event type; delete that one first (DELETE /v1/orgs/{}/event-types/{}), once no webhook names it, or leave the catalog out",
                    catalog.name, t.name, id, t.name
                )));
            }
        }
        // A subscription naming what no longer exists would match nothing, silently, and could
        // not be saved again unchanged: as for deleting a type, the webhooks change first.
        // Only what this change would take away: what already names nothing (left so by an
        // earlier version) must not stop unrelated changes.
        let already = snapshot.lost_with_catalogs(&snapshot.org.catalogs);
        let lost: Vec<(WebhookId, Vec<String>)> = snapshot
            .lost_with_catalogs(&org.catalogs)
            .into_iter()
            .filter_map(|(w, names)| {
                let before = already.iter().find(|(a, _)| *a == w).map(|(_, n)| n);
                let new: Vec<String> = names
                    .into_iter()
                    .filter(|n| before.is_none_or(|b| !b.contains(n)))
                    .collect();
                (!new.is_empty()).then_some((w, new))
            })
            .collect();
        if !lost.is_empty() {
            let named = super::name_webhooks(lost.iter().filter_map(|(id, names)| {
                let webhook = snapshot.webhook(id)?;
                Some((&**webhook, Some(names.join(", "))))
            }));
            let which = match lost.len() {
                1 => "1 webhook subscribes".to_owned(),
                n => format!("{n} webhooks subscribe"),
            };
            return Err(ServiceError::Conflict(format!(
                "{which} to event types or channels only the catalogs left out define: {named}; \
                 take those out of their subscriptions first, or keep the catalog",
            )));
        }
    }
    if (&org.name, &org.handle, &org.catalogs)
        == (
            &snapshot.org.name,
            &snapshot.org.handle,
            &snapshot.org.catalogs,
        )
    {
        // Nothing changes: nothing to write, nothing to tell.
        return Ok(org);
    }
    org.updated_at = state.clock.now();
    let org = write_then_forget(state, id, "organization", |store| async move {
        store.update_org(&org).await.map(|()| org)
    })
    .await?;
    let catalogs: Vec<&str> = org.catalogs.iter().map(|c| c.as_str()).collect();
    tracing::info!(org = %org.id, handle = org.handle.as_str(), catalogs = ?catalogs, "organization changed");
    if (&org.handle, &org.catalogs) != (&snapshot.org.handle, &snapshot.org.catalogs) {
        // WebSub topics name the handle, and a catalog may bring new channels.
        super::subscriptions::subscribe_new_topics_soon(state, &org.id);
    }
    Ok(org)
}

pub async fn delete(state: &AppState, scope: &Scope, id: &OrgId) -> ServiceResult<()> {
    // Another organization's id is "not found" to a key, as everywhere; its own, "forbidden".
    scope.check_org(id)?;
    scope.require_admin()?;
    let org = id.clone();
    to_the_end(state, |state| async move {
        // Its webhooks, for the dispatcher to forget their endpoints once they are gone, and
        // their WebSub subscribers, to be told.
        let (webhooks, subscribed) = match state.directory.snapshot(&org).await {
            Ok(snapshot) => (
                snapshot.webhooks().iter().map(|w| w.id.clone()).collect(),
                super::subscriptions::subscribed_channels(&snapshot, state.clock.now()),
            ),
            Err(_) => (Vec::new(), Vec::new()),
        };
        state
            .store
            .delete_org(&org)
            .await
            .map_err(ServiceError::from_store("organization"))?;
        state.dispatcher.forget_webhooks(&webhooks);
        state.directory.invalidate(&org);
        state.directory.forget_unused_schemas();
        super::auth::forget_org(&state, &org);
        super::subscriptions::unsubscribe_soon(&state, &org, subscribed);
        Ok(())
    })
    .await?;
    tracing::info!(org = %id, "organization deleted with all its data");
    // A write on another node that read the organization just before may still commit for it
    // (an ingest gives up after about 20 s): what it stored is swept once that is over, as well
    // as by the retention task every ten minutes.
    super::retention::sweep_later(state, &SWEEP_AFTER_DELETION, |store| async move {
        super::retention::sweep_deleted_orgs(&*store).await;
    });
    Ok(())
}

/// How long after deleting an organization what racing writes stored for it is swept.
const SWEEP_AFTER_DELETION: [std::time::Duration; 1] = [std::time::Duration::from_secs(30)];
