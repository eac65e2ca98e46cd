//! Admission: a bound on the request bodies this node handles at once.
//!
//! Every request body is read into memory whole (up to `HERALD_MAX_BODY_BYTES`), and posted
//! events live, with what is parsed from them, until their answer. Without a bound, a flood of
//! large requests (a producer replaying a backlog over hundreds of connections) grows the
//! process until the kernel kills it. So the API's body extractors (`extract.rs`) first take
//! the body's size from a budget (`HERALD_MAX_BODY_BYTES_IN_FLIGHT`); posted events keep their
//! share until the answer, other bodies until they are parsed. A request that finds the budget
//! spent waits, its body still unread in the socket, and is answered `503 overloaded` with
//! `Retry-After` if no room frees up in time: nothing of it was stored, so sending it again
//! loses nothing. Requests without a body (reads) are never held up. The dashboard's forms,
//! small and rare, are not counted.
//!
//! One organization may hold at most a quarter of the budget (or its largest body, if that is
//! more): a tenant replaying a backlog waits for its own requests to finish, and the others'
//! events still find room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::metrics::Metrics;

/// The budget is counted in KiB, so that a `u32` of permits covers any size.
const UNIT: usize = 1024;
/// At most one warning per this long while requests are being turned away.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Room for request bodies, shared by every connection of this node.
pub struct BodyBudget {
    room: Arc<Semaphore>,
    total_units: u32,
    /// The most one organization holds at once.
    tenant_units: u32,
    /// Each organization's room, while it has requests admitted or waiting.
    tenants: Arc<Tenants>,
    /// The largest body accepted: what a body of unknown length (chunked) is charged.
    max_body: usize,
    /// How long a request waits for room before its `503`.
    wait: Duration,
    started: Instant,
    /// When (ms since `started`, plus one) the last warning was logged; 0: never.
    last_warned: AtomicU64,
    shed_since_warned: AtomicU64,
}

impl BodyBudget {
    pub fn new(total_bytes: usize, max_body: usize, wait: Duration) -> Self {
        let total_units = u32::try_from(total_bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        let largest_body = u32::try_from(max_body.div_ceil(UNIT)).unwrap_or(u32::MAX);
        let tenant_units = (total_units / 4).max(largest_body).clamp(1, total_units);
        Self {
            room: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
            tenant_units,
            tenants: Arc::new(Tenants::default()),
            max_body,
            wait,
            started: Instant::now(),
            last_warned: AtomicU64::new(0),
            shed_since_warned: AtomicU64::new(0),
        }
    }

    /// Bytes of request bodies admitted and not yet answered.
    pub fn in_flight_bytes(&self) -> u64 {
        let used = self.total_units as usize - self.room.available_permits();
        (used * UNIT) as u64
    }

    /// The bytes a request's body is expected to bring: its declared length (no more than the
    /// largest body accepted; a longer one is refused with `413` before it is read), the
    /// largest body when it does not declare one, and nothing for methods that carry none.
    pub fn expected_bytes(&self, request: &Request) -> usize {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        match declared {
            Some(n) => n.min(self.max_body),
            None if carries_body(request.method()) => self.max_body,
            None => 0,
        }
    }

    /// What a request expected to bring `bytes` ([`BodyBudget::expected_bytes`]) is charged, in
    /// units. A single request larger than the whole budget is charged the whole budget, so it
    /// can still go alone.
    pub fn charge(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.total_units)
    }

    /// Waits for room for a body charged `units` ([`BodyBudget::charge`]); `503 overloaded` if
    /// none frees up within the wait. Called by the body extractors, after the caller's token
    /// was checked: a request without a valid one is refused before it gets here, so it
    /// cannot spend the budget by declaring large bodies it never sends.
    ///
    /// `tenant` is the organization the request is for, if any: its room is taken first.
    pub async fn admit(
        &self,
        units: u32,
        tenant: Option<String>,
        metrics: &Metrics,
    ) -> Result<Admitted, ApiError> {
        if units == 0 {
            return Ok(Admitted {
                _share: None,
                _tenant: None,
            });
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        let tenant = match tenant {
            Some(key) => {
                let share = TenantShare::new(&self.tenants, key, self.tenant_units);
                match acquire(&share.room, units.min(self.tenant_units), deadline).await {
                    Some(permit) => Some(share.holding(permit)),
                    None => {
                        self.note_shed();
                        metrics.request_shed();
                        return Err(tenant_overloaded(self));
                    }
                }
            }
            None => None,
        };
        match acquire(&self.room, units, deadline).await {
            Some(share) => Ok(Admitted {
                _share: Some(share),
                _tenant: tenant,
            }),
            None => {
                self.note_shed();
                metrics.request_shed();
                Err(overloaded(self))
            }
        }
    }

    /// Organizations with requests admitted or waiting (for tests).
    #[cfg(test)]
    fn tenants_tracked(&self) -> usize {
        self.tenants.lock().len()
    }

    /// Logs that requests are being turned away, at most once per [`WARN_EVERY`].
    fn note_shed(&self) {
        let shed = self.shed_since_warned.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_warned.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.shed_since_warned.store(0, Ordering::Relaxed);
            tracing::warn!(
                turned_away = shed,
                budget_bytes = self.total_units as u64 * UNIT as u64,
                waited_ms = self.wait.as_millis() as u64,
                "request bodies in flight are at HERALD_MAX_BODY_BYTES_IN_FLIGHT; answering 503 \
                 to requests that found no room (raise it if this node has memory to spare, or \
                 add nodes)"
            );
        }
    }
}

/// `units` of `room`, taken at once when there are (the timer is set only when there are not),
/// or `None` if they did not free up by `deadline`.
async fn acquire(
    room: &Arc<Semaphore>,
    units: u32,
    deadline: tokio::time::Instant,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(share) = room.clone().try_acquire_many_owned(units) {
        return Some(share);
    }
    // The semaphores are never closed; a timeout is the one way to `None`.
    tokio::time::timeout_at(deadline, room.clone().acquire_many_owned(units))
        .await
        .ok()?
        .ok()
}

/// A request's share of the budget, given back when dropped: hold it for as long as what was
/// read from the body lives.
pub struct Admitted {
    // Dropped in this order: the node's room, then the organization's.
    _share: Option<OwnedSemaphorePermit>,
    _tenant: Option<TenantShare>,
}

/// Each organization's room, by organization id. An entry lives while someone holds or waits
/// for its room: it is made by the first such request and removed by the last.
#[derive(Default)]
struct Tenants(Mutex<HashMap<String, Arc<Semaphore>>>);

impl Tenants {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        // The map is left consistent at every step, so a panic elsewhere does not spoil it.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One request's claim on its organization's room.
struct TenantShare {
    tenants: Arc<Tenants>,
    key: String,
    room: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl TenantShare {
    fn new(tenants: &Arc<Tenants>, key: String, units: u32) -> Self {
        let room = {
            let mut map = tenants.lock();
            match map.get(&key) {
                Some(room) => room.clone(),
                None => {
                    let room = Arc::new(Semaphore::new(units as usize));
                    map.insert(key.clone(), room.clone());
                    room
                }
            }
        };
        Self {
            tenants: tenants.clone(),
            key,
            room,
            permit: None,
        }
    }

    fn holding(mut self, permit: OwnedSemaphorePermit) -> Self {
        self.permit = Some(permit);
        self
    }
}

impl Drop for TenantShare {
    fn drop(&mut self) {
        // The permit holds a reference to the room too; give it back first.
        self.permit = None;
        let mut tenants = self.tenants.lock();
        // Only the map's reference and this one left: nobody else holds or waits for it (every
        // other reference is taken from the map under this lock).
        if Arc::strong_count(&self.room) == 2 {
            tenants.remove(&self.key);
        }
    }
}

fn carries_body(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
    )
}

fn overloaded(budget: &BodyBudget) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!(
            "this node is already handling {} of request bodies, its limit \
             (HERALD_MAX_BODY_BYTES_IN_FLIGHT), and no room freed up within {} ms; nothing of \
             this request was stored, so send it again after Retry-After",
            in_kib_or_mib(budget.total_units),
            budget.wait.as_millis()
        ),
    )
}

fn tenant_overloaded(budget: &BodyBudget) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!(
            "this organization already has {} of request bodies in flight on this node, the most \
             one organization may hold (a quarter of HERALD_MAX_BODY_BYTES_IN_FLIGHT), and none \
             of them was answered within {} ms; nothing of this request was stored, so send it \
             again after Retry-After, with fewer requests at once",
            in_kib_or_mib(budget.tenant_units),
            budget.wait.as_millis()
        ),
    )
}

/// `units` KiB, as "512 KiB" or "64 MiB".
fn in_kib_or_mib(units: u32) -> String {
    if units >= 1024 && units.is_multiple_of(1024) {
        format!("{} MiB", units / 1024)
    } else {
        format!("{units} KiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(method: Method, length: Option<&str>) -> Request {
        let mut builder = axum::http::Request::builder()
            .method(method)
            .uri("/v1/orgs");
        if let Some(length) = length {
            builder = builder.header(header::CONTENT_LENGTH, length);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[test]
    fn a_request_is_charged_what_its_body_may_hold() {
        let budget = BodyBudget::new(64 * 1024, 16 * 1024, Duration::from_secs(1));
        // Declared lengths round up to whole KiB; a body over the limit costs the limit.
        assert_eq!(
            budget.charge(budget.expected_bytes(&request(Method::POST, Some("1")))),
            1
        );
        assert_eq!(
            budget.charge(budget.expected_bytes(&request(Method::POST, Some("2049")))),
            3
        );
        assert_eq!(
            budget.charge(budget.expected_bytes(&request(Method::POST, Some("999999")))),
            16
        );
        assert_eq!(
            budget.charge(budget.expected_bytes(&request(Method::POST, Some("0")))),
            0
        );
        // A body of unknown length may be as large as the limit.
        assert_eq!(
            budget.charge(budget.expected_bytes(&request(Method::PATCH, None))),
            16
        );
        assert_eq!(
            budget.charge(budget.expected_bytes(&request(Method::POST, Some("many")))),
            16
        );
        // Reads carry nothing to hold.
        assert_eq!(
            budget.charge(budget.expected_bytes(&request(Method::GET, None))),
            0
        );
        assert_eq!(
            budget.charge(budget.expected_bytes(&request(Method::DELETE, None))),
            0
        );
    }

    #[test]
    fn a_request_larger_than_the_whole_budget_can_still_go_alone() {
        let budget = BodyBudget::new(4 * 1024, 1024 * 1024, Duration::from_secs(1));
        assert_eq!(
            budget.charge(budget.expected_bytes(&request(Method::POST, Some("1048576")))),
            4
        );
        assert_eq!(budget.in_flight_bytes(), 0);
    }

    #[tokio::test]
    async fn one_organization_holds_at_most_a_quarter_and_the_others_still_get_in() {
        // 64 KiB of room, bodies of at most 4 KiB: an organization holds 16 KiB at most.
        let budget = BodyBudget::new(64 * 1024, 4 * 1024, Duration::from_millis(50));
        let metrics = Metrics::default();
        let acme = || Some("org_acme".to_owned());
        let mut held = Vec::new();
        for _ in 0..4 {
            let Ok(admitted) = budget.admit(4, acme(), &metrics).await else {
                panic!("no room within the share");
            };
            held.push(admitted);
        }
        assert_eq!(budget.in_flight_bytes(), 16 * 1024);
        // Acme's fifth body waits for its own, though the node has room, and is turned away.
        let Err(refused) = budget.admit(1, acme(), &metrics).await else {
            panic!("admitted over its share");
        };
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            refused.message.contains("this organization"),
            "{}",
            refused.message
        );
        // Another organization, and the admin's requests about none, get in at once.
        let globex = budget.admit(4, Some("org_globex".into()), &metrics).await;
        let admin = budget.admit(4, None, &metrics).await;
        assert!(globex.is_ok() && admin.is_ok());
        assert_eq!(budget.tenants_tracked(), 2);
        // Once one of Acme's is answered, its next one gets in.
        held.pop();
        assert!(budget.admit(4, acme(), &metrics).await.is_ok());
        // Organizations with nothing in flight are forgotten.
        drop((held, globex, admin));
        assert_eq!(budget.tenants_tracked(), 0);
        assert_eq!(budget.in_flight_bytes(), 0);
    }

    #[tokio::test]
    async fn a_request_waiting_for_its_organizations_room_gets_it_when_freed() {
        let budget = Arc::new(BodyBudget::new(
            64 * 1024,
            16 * 1024,
            Duration::from_secs(5),
        ));
        let metrics = Arc::new(Metrics::default());
        let first = budget.admit(16, Some("org_a".into()), &metrics).await.ok();
        let waiting = tokio::spawn({
            let (budget, metrics) = (budget.clone(), metrics.clone());
            async move {
                budget
                    .admit(16, Some("org_a".into()), &metrics)
                    .await
                    .is_ok()
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "it waits while the first holds the share"
        );
        assert_eq!(budget.tenants_tracked(), 1);
        drop(first);
        assert!(
            waiting.await.unwrap(),
            "admitted once the first was answered"
        );
        assert_eq!(budget.tenants_tracked(), 0);
    }
}
