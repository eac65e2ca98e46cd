//! Admission: a bound on the request bodies this node handles at once.
//!
//! Every request body is read into memory whole (up to `HERALD_MAX_BODY_BYTES`), and posted
//! events live, with what is parsed from them, until their answer. Without a bound, a flood of
//! large requests (a producer replaying a backlog over hundreds of connections) grows the
//! process until the kernel kills it. So the API's body extractors (`body.rs`) first take
//! the body's size from a budget (`HERALD_MAX_BODY_BYTES_IN_FLIGHT`); posted events keep their
//! share until the answer, other bodies until they are parsed. A request that finds the budget
//! spent waits, its body still unread in the socket, and is answered `503 overloaded` with
//! `Retry-After` if no room frees up in time: nothing of it was stored, so sending it again
//! loses nothing. Requests without a body (reads) are never held up. The dashboard's forms,
//! small and rare, are not counted.
//!
//! One organization may hold at most a quarter of the budget (or its largest body, if that is
//! more): a tenant replaying a backlog waits for its own requests to finish, and the others'
//! events still find room, as long as fewer than four organizations flood at once. They are
//! counted in [`STRIPES`] rooms by a hash of their id, with no map to keep and no lock to take
//! per request; two that share a room share its quarter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::metrics::Metrics;

/// The budget is counted in KiB, so that a `u32` of permits covers any size.
const UNIT: usize = 1024;
/// How many rooms organizations are counted in.
const STRIPES: usize = 64;
/// At most one warning per this long while requests are being turned away.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Room for request bodies, shared by every connection of this node.
pub struct BodyBudget {
    room: Arc<Semaphore>,
    total_units: u32,
    /// The most one organization holds at once.
    tenant_units: u32,
    /// The organizations' rooms, of `tenant_units` each; an organization's is chosen by a hash
    /// of its id.
    tenant_rooms: Box<[Arc<Semaphore>]>,
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
            tenant_rooms: (0..STRIPES)
                .map(|_| Arc::new(Semaphore::new(tenant_units as usize)))
                .collect(),
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
        match declared_length(request) {
            Some(n) => n.min(self.max_body),
            // A chunked body may come with any method (a `DELETE` reads one, to refuse it).
            None if carries_body(request.method())
                || request.headers().contains_key(header::TRANSFER_ENCODING) =>
            {
                self.max_body
            }
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
    /// `tenant` is the room of the organization the request is for, if any
    /// ([`BodyBudget::tenant_room`]): it is taken first.
    pub async fn admit(
        &self,
        units: u32,
        tenant: Option<TenantRoom>,
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
            Some(TenantRoom(i)) => {
                let room = &self.tenant_rooms[i];
                match acquire(room, units.min(self.tenant_units), deadline).await {
                    Some(permit) => Some(permit),
                    None => {
                        self.note_shed(Shed::OrganizationShare);
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
                self.note_shed(Shed::Node);
                metrics.request_shed();
                Err(overloaded(self))
            }
        }
    }

    /// The room an organization's bodies are counted in, from its id as written in a path (in
    /// any case).
    pub fn tenant_room(&self, org: &str) -> TenantRoom {
        // FNV-1a over the lower-cased bytes: a few instructions a byte (a general-purpose hasher
        // fed byte by byte cost about 30 times as much), and the same room every time.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in org.bytes() {
            hash = (hash ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0000_0100_0000_01b3);
        }
        TenantRoom(((hash ^ (hash >> 32)) % STRIPES as u64) as usize)
    }

    /// Logs that requests are being turned away, at most once per [`WARN_EVERY`].
    fn note_shed(&self, why: Shed) {
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
            let (budget, waited) = (
                self.total_units as u64 * UNIT as u64,
                self.wait.as_millis() as u64,
            );
            match why {
                Shed::Node => tracing::warn!(
                    turned_away = shed,
                    budget_bytes = budget,
                    waited_ms = waited,
                    "request bodies in flight are at HERALD_MAX_BODY_BYTES_IN_FLIGHT; answering \
                     503 to requests that found no room (raise it if this node has memory to \
                     spare, or add nodes)"
                ),
                Shed::OrganizationShare => tracing::warn!(
                    turned_away = shed,
                    organization_share_bytes = self.tenant_units as u64 * UNIT as u64,
                    waited_ms = waited,
                    "an organization's request bodies in flight are at its share (a quarter of \
                     HERALD_MAX_BODY_BYTES_IN_FLIGHT); answering 503 to its requests that found \
                     no room while other organizations' still get in"
                ),
            }
        }
    }
}

/// Why a request was turned away, for the log.
#[derive(Debug, Clone, Copy)]
enum Shed {
    /// The node's whole budget was in use.
    Node,
    /// Its organization's share was.
    OrganizationShare,
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
    _share: Option<OwnedSemaphorePermit>,
    _tenant: Option<OwnedSemaphorePermit>,
}

/// Which of the organizations' rooms a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TenantRoom(usize);

/// The body length the request declares (`Content-Length`), if it declares one that reads.
pub fn declared_length(request: &Request) -> Option<usize> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
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
            "this organization already has {} of request bodies in flight on this node (counted \
             with the few organizations that share its room), the most one organization may \
             hold (a quarter of HERALD_MAX_BODY_BYTES_IN_FLIGHT, or the largest body if that is \
             more), and none of them was answered within {} ms; nothing of this request was \
             stored, so send it again after Retry-After, with fewer requests at once",
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
        // Unless it sends a body without saying how long.
        let mut chunked = request(Method::DELETE, None);
        chunked.headers_mut().insert(
            header::TRANSFER_ENCODING,
            axum::http::HeaderValue::from_static("chunked"),
        );
        assert_eq!(budget.charge(budget.expected_bytes(&chunked)), 16);
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
        let acme = budget.tenant_room("org_acme");
        // Another organization, in another room (rooms are chosen by a fixed hash).
        let globex = (0..)
            .map(|i| budget.tenant_room(&format!("org_{i}")))
            .find(|room| *room != acme)
            .unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            let Ok(admitted) = budget.admit(4, Some(acme), &metrics).await else {
                panic!("no room within the share");
            };
            held.push(admitted);
        }
        assert_eq!(budget.in_flight_bytes(), 16 * 1024);
        // Acme's fifth body waits for its own, though the node has room, and is turned away.
        let Err(refused) = budget.admit(1, Some(acme), &metrics).await else {
            panic!("admitted over its share");
        };
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            refused.message.contains("this organization"),
            "{}",
            refused.message
        );
        // Another organization, and the admin's requests about none, get in at once.
        let other = budget.admit(4, Some(globex), &metrics).await;
        let admin = budget.admit(4, None, &metrics).await;
        assert!(other.is_ok() && admin.is_ok());
        // Once one of Acme's is answered, its next one gets in.
        held.pop();
        let again = budget.admit(4, Some(acme), &metrics).await;
        assert!(again.is_ok());
        drop((held, other, admin, again));
        assert_eq!(budget.in_flight_bytes(), 0);
    }

    #[test]
    fn an_organization_is_counted_in_one_room_whatever_the_case_of_its_id() {
        let budget = BodyBudget::new(64 * 1024, 4 * 1024, Duration::from_millis(50));
        assert_eq!(
            budget.tenant_room("org_01JD0000000000000000000000"),
            budget.tenant_room("org_01jd0000000000000000000000")
        );
        // Ids spread over the rooms.
        let rooms: std::collections::HashSet<TenantRoom> = (0..1_000)
            .map(|i| budget.tenant_room(&format!("org_{i:026}")))
            .collect();
        assert!(rooms.len() > STRIPES / 2, "{} rooms used", rooms.len());
    }

    #[tokio::test]
    async fn a_request_turned_away_by_the_node_gives_its_organizations_room_back() {
        let budget = BodyBudget::new(64 * 1024, 4 * 1024, Duration::from_millis(50));
        let metrics = Metrics::default();
        let Ok(everything) = budget.admit(64, None, &metrics).await else {
            panic!("the whole budget, for the admin");
        };
        let room = budget.tenant_room("org_acme");
        let Err(refused) = budget.admit(4, Some(room), &metrics).await else {
            panic!("admitted with the node full");
        };
        assert!(refused.message.contains("this node"), "{}", refused.message);
        assert_eq!(
            budget.tenant_rooms[room.0].available_permits(),
            budget.tenant_units as usize,
            "the organization's room was not given back"
        );
        drop(everything);
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
        let room = budget.tenant_room("org_a");
        let first = budget.admit(16, Some(room), &metrics).await.ok();
        let waiting = tokio::spawn({
            let (budget, metrics) = (budget.clone(), metrics.clone());
            async move { budget.admit(16, Some(room), &metrics).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "it waits while the first holds the share"
        );
        drop(first);
        assert!(
            waiting.await.unwrap(),
            "admitted once the first was answered"
        );
    }
}
