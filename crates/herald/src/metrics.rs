//! `/metrics` in the Prometheus text format: what ingest counted, what the dispatcher counted,
//! how long commits take, and each webhook's backlog.

use std::fmt::Write;

use herald_core::metrics::{Counter, render_value};
use herald_core::store::PendingStat;
use herald_core::{OrgId, Timestamp, WebhookId};
use herald_dispatch::DispatchMetrics;

/// What the API counts: events ingested, requests shed, responses by status class.
#[derive(Debug, Default)]
pub struct Metrics {
    events_ingested: Counter,
    /// Herald's own events (`delivery.exhausted`, `webhook.disabled`...), apart: a failing
    /// endpoint would otherwise look like producers sending more.
    own_events: Counter,
    deliveries_created: Counter,
    requests_shed: Counter,
    /// Responses by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    responses: [Counter; 5],
}

impl Metrics {
    /// Events stored (duplicates excluded) and the deliveries they fanned out to; `own`: they
    /// are Herald's operational events, not a producer's.
    pub fn events_stored(&self, own: bool, events: usize, deliveries: usize) {
        let counter = if own {
            &self.own_events
        } else {
            &self.events_ingested
        };
        counter.add(events as u64);
        self.deliveries_created.add(deliveries as u64);
    }

    /// A request turned away with `503 overloaded` (`api::admission`).
    pub fn request_shed(&self) {
        self.requests_shed.add(1);
    }

    /// A response of the API or the dashboard, counted by its status class.
    pub fn responded(&self, status: u16) {
        if let Some(class) = self
            .responses
            .get(usize::from(status / 100).wrapping_sub(1))
        {
            class.add(1);
        }
    }
}

/// Marks an answer to a liveness or readiness probe, which `/metrics` does not count among
/// the API's responses: a load balancer asking `/readyz` through an outage would swell the 5xx
/// count an operator alerts on.
#[derive(Debug, Clone, Copy)]
pub struct Probe;

/// Each webhook's backlog as last counted for `/metrics`. Counting reads every pending
/// delivery (0.29 s with 500,000 pending), and `/metrics` may be scraped by anyone unless
/// `HERALD_METRICS_TOKEN` is set, as often as they like: a count is reused for twenty times as
/// long as it took, so that counting takes at most about a twentieth of one reader, however
/// often it is asked for. A small backlog, counted in a millisecond, is counted at every scrape.
#[derive(Default)]
pub struct BacklogCount {
    /// The last successful count, and when the last count failed; held while counting, so
    /// that scrapes arriving meanwhile wait for it instead of counting again.
    last: tokio::sync::Mutex<(Option<Counted>, Option<tokio::time::Instant>)>,
}

struct Counted {
    at: tokio::time::Instant,
    took: std::time::Duration,
    pending: Vec<PendingStat>,
}

/// How many times as long as a count took it is reused.
const REUSE_FOR: u32 = 20;

impl BacklogCount {
    /// The backlog, counted by `count` unless the last count is still fresh; `None` (and
    /// nothing kept) when `count` fails.
    pub async fn get<F, Fut>(&self, count: F) -> Option<Vec<PendingStat>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<Vec<PendingStat>>>,
    {
        let arrived = tokio::time::Instant::now();
        let mut last = self.last.lock().await;
        let (counted, failed_at) = &mut *last;
        if let Some(counted) = counted.as_ref()
            && counted.at.elapsed() < counted.took * REUSE_FOR
        {
            return Some(counted.pending.clone());
        }
        // A count that failed while this scrape waited for it (a database away or stalled, up
        // to 3 s each) answers it too, rather than each waiting scrape trying in turn.
        if failed_at.is_some_and(|at| at > arrived) {
            return None;
        }
        let started = tokio::time::Instant::now();
        let Some(pending) = count().await else {
            *failed_at = Some(tokio::time::Instant::now());
            return None;
        };
        *failed_at = None;
        *counted = Some(Counted {
            at: tokio::time::Instant::now(),
            took: started.elapsed(),
            pending: pending.clone(),
        });
        Some(pending)
    }
}

/// Everything `/metrics` shows.
pub struct Snapshot<'a> {
    pub ingest: &'a Metrics,
    pub dispatch: &'a DispatchMetrics,
    /// Tokens refused, and requests held back for them (`service::token_failures`).
    pub tokens: &'a crate::service::token_failures::TokenFailures,
    pub commit_latency: Option<&'a herald_core::metrics::Histogram>,
    pub held_in_memory: usize,
    pub held_bytes: usize,
    /// Requests in flight, and slow ones (`Dispatcher::requests_in_flight`).
    pub requests_in_flight: (usize, usize),
    /// Bytes of request bodies admitted and not yet answered (`api::admission`).
    pub body_bytes_in_flight: u64,
    /// Each webhook's backlog; `None` when the database did not answer for this scrape.
    pub pending: Option<Vec<PendingStat>>,
    /// Each webhook with a running task on this node and its adaptive limit.
    pub concurrency: Vec<(WebhookId, OrgId, usize)>,
    /// Whether this node's attempts wait for the database to store outcomes again.
    pub attempts_paused: bool,
    /// Whether this node cannot store writes now ([`herald_core::store::Store::write_trouble`]).
    pub writes_failing: bool,
    pub now: Timestamp,
}

impl Snapshot<'_> {
    pub fn render(&self) -> String {
        let mut out = String::new();
        render_value(
            &mut out,
            "herald_database_up",
            "gauge",
            "Whether the database answered this scrape's read (1) or not (0); without it the per-webhook backlog series are missing, not zero.",
            u64::from(self.pending.is_some()),
        );
        render_value(
            &mut out,
            "herald_database_writes_failing",
            "gauge",
            "Whether this node cannot store writes now (1): a commit failed moments ago (a full disk), or the embedded database's files were removed; /readyz says why. The database may still answer reads (herald_database_up 1).",
            u64::from(self.writes_failing),
        );
        let _ = writeln!(
            out,
            "# HELP herald_build_info The running version of Herald.\n# TYPE herald_build_info gauge\nherald_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            herald_core::VERSION,
            crate::COMMIT
        );
        render_value(
            &mut out,
            "herald_attempts_paused",
            "gauge",
            "Whether this node holds its attempts back (1) because the database does not store their outcomes.",
            u64::from(self.attempts_paused),
        );
        let _ = writeln!(
            out,
            "# HELP herald_http_responses_total Responses of the API and the dashboard by status class, not counting /healthz and /readyz (5xx: Herald's fault or its database's; 503s with Retry-After are also counted in herald_requests_shed_total when shed).\n# TYPE herald_http_responses_total counter"
        );
        for (i, class) in self.ingest.responses.iter().enumerate() {
            let _ = writeln!(
                out,
                "herald_http_responses_total{{class=\"{}xx\"}} {}",
                i + 1,
                class.get()
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, c: &Counter| {
            render_value(out, name, "counter", help, c.get())
        };
        counter(
            &mut out,
            "herald_events_ingested_total",
            "Events accepted from producers (duplicates excluded).",
            &self.ingest.events_ingested,
        );
        counter(
            &mut out,
            "herald_own_events_total",
            "Herald's own events stored (delivery.exhausted, webhook.disabled, webhook.enabled).",
            &self.ingest.own_events,
        );
        counter(
            &mut out,
            "herald_deliveries_created_total",
            "Deliveries created by fan-out (of producers' events and Herald's own).",
            &self.ingest.deliveries_created,
        );
        counter(
            &mut out,
            "herald_requests_shed_total",
            "Requests answered 503 overloaded: request bodies in flight were at their limit.",
            &self.ingest.requests_shed,
        );
        counter(
            &mut out,
            "herald_invalid_tokens_total",
            "Tokens sent to the API, the dashboard's sign-in or /metrics that were checked and are not valid: a client with a revoked key, or someone guessing.",
            &self.tokens.invalid,
        );
        counter(
            &mut out,
            "herald_tokens_held_back_total",
            "Requests answered 429 too_many_invalid_tokens, their token unchecked: their network had sent more tokens that are not valid than HERALD_TOKEN_FAILURES_PER_MINUTE allows.",
            &self.tokens.held_back,
        );
        let d = self.dispatch;
        counter(
            &mut out,
            "herald_deliveries_succeeded_total",
            "Deliveries that succeeded.",
            &d.delivered,
        );
        counter(
            &mut out,
            "herald_attempts_failed_total",
            "Attempts that failed.",
            &d.failed_attempts,
        );
        counter(
            &mut out,
            "herald_retries_scheduled_total",
            "Failed attempts followed by a scheduled retry.",
            &d.retries_scheduled,
        );
        counter(
            &mut out,
            "herald_deliveries_exhausted_total",
            "Deliveries that failed for good: their last attempt failed, or their endpoint's circuit stayed open past their retry schedule.",
            &d.exhausted,
        );
        counter(
            &mut out,
            "herald_attempts_blocked_total",
            "Attempts refused by the address policy.",
            &d.blocked,
        );
        counter(
            &mut out,
            "herald_requests_cut_short_total",
            "Requests given up after a second unanswered because herald_slow_requests_in_flight was at its limit (recorded as timeouts).",
            &d.cut_short,
        );
        counter(
            &mut out,
            "herald_deliveries_spilled_total",
            "New deliveries left in the store because their webhook had its share of memory.",
            &d.spilled,
        );
        counter(
            &mut out,
            "herald_deliveries_given_back_total",
            "Queued deliveries given back to the store to make room for other webhooks.",
            &d.given_back,
        );
        d.attempt_latency.render(
            &mut out,
            "herald_attempt_duration_seconds",
            "How long delivery attempts take.",
        );
        if let Some(h) = self.commit_latency {
            h.render(
                &mut out,
                "herald_store_commit_duration_seconds",
                "How long a group commit takes, fsync included.",
            );
        }
        render_value(
            &mut out,
            "herald_deliveries_in_memory",
            "gauge",
            "Deliveries queued or in flight in this node's dispatcher.",
            self.held_in_memory as u64,
        );
        render_value(
            &mut out,
            "herald_deliveries_in_memory_bytes",
            "gauge",
            "Bytes of events those deliveries carry, counted once per delivery.",
            self.held_bytes as u64,
        );
        render_value(
            &mut out,
            "herald_requests_in_flight",
            "gauge",
            "Requests this node has in flight to webhooks, and webhooks' tasks holding a place while they wait for a slot of their own (limit: HERALD_MAX_REQUESTS_IN_FLIGHT); a request unanswered after a second leaves for herald_slow_requests_in_flight.",
            self.requests_in_flight.0 as u64,
        );
        render_value(
            &mut out,
            "herald_slow_requests_in_flight",
            "gauge",
            "Requests in flight whose endpoint has not answered within a second; they make room for the others, up to as many again (past that, such a request is given up as a timeout).",
            self.requests_in_flight.1 as u64,
        );
        render_value(
            &mut out,
            "herald_request_body_bytes_in_flight",
            "gauge",
            "Bytes of request bodies admitted and not yet answered (limit: HERALD_MAX_BODY_BYTES_IN_FLIGHT).",
            self.body_bytes_in_flight,
        );
        let _ = writeln!(
            out,
            "# HELP herald_webhook_pending_deliveries Pending deliveries per webhook (org: its organization), as the database counts them: with several nodes, every node reports the same whole count (take one node's, or the max, not the sum). active=\"false\": the webhook is disabled and they wait, parked, until it is enabled. A webhook with none pending has no series.\n# TYPE herald_webhook_pending_deliveries gauge"
        );
        for p in self.pending.iter().flatten() {
            let _ = writeln!(
                out,
                "herald_webhook_pending_deliveries{{webhook=\"{}\",org=\"{}\",active=\"{}\"}} {}",
                p.webhook_id, p.org_id, p.active, p.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP herald_webhook_oldest_pending_seconds Age of each webhook's oldest pending delivery, as the database knows it (the same on every node). Alert on active=\"true\": a disabled webhook's (active=\"false\") wait, parked, and only grow older.\n# TYPE herald_webhook_oldest_pending_seconds gauge"
        );
        for p in self.pending.iter().flatten() {
            let age = (self.now.as_millis() - p.oldest.as_millis()).max(0) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "herald_webhook_oldest_pending_seconds{{webhook=\"{}\",org=\"{}\",active=\"{}\"}} {age}",
                p.webhook_id, p.org_id, p.active
            );
        }
        let _ = writeln!(
            out,
            "# HELP herald_webhook_concurrency_limit Requests this node may have in flight to each webhook with work now (org: its organization; adaptive, up to --endpoint-concurrency; lowered when the endpoint looks overloaded).\n# TYPE herald_webhook_concurrency_limit gauge"
        );
        for (webhook, org, limit) in &self.concurrency {
            let _ = writeln!(
                out,
                "herald_webhook_concurrency_limit{{webhook=\"{webhook}\",org=\"{org}\"}} {limit}"
            );
        }
        out
    }
}

#[cfg(test)]
mod backlog_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn stat(count: u64) -> Vec<PendingStat> {
        vec![PendingStat {
            webhook_id: WebhookId::from_trusted("wh_1".into()),
            org_id: herald_core::OrgId::from_trusted("org_1".into()),
            count,
            oldest: Timestamp::from_millis(0),
            active: true,
        }]
    }

    /// A count that takes 100 ms and answers how many counts ran so far.
    async fn slow_count(runs: &AtomicUsize) -> Option<Vec<PendingStat>> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some(stat(runs.fetch_add(1, Ordering::SeqCst) as u64 + 1))
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_count_is_reused_for_twenty_times_as_long_as_it_took() {
        let backlog = BacklogCount::default();
        let runs = AtomicUsize::new(0);
        assert_eq!(backlog.get(|| slow_count(&runs)).await, Some(stat(1)));
        // Scrapes within the next two seconds get the same count.
        tokio::time::sleep(Duration::from_millis(1_900)).await;
        assert_eq!(backlog.get(|| slow_count(&runs)).await, Some(stat(1)));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // After that, it is counted again.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(backlog.get(|| slow_count(&runs)).await, Some(stat(2)));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn scrapes_during_a_count_wait_for_it_instead_of_counting_again() {
        let backlog = BacklogCount::default();
        let runs = AtomicUsize::new(0);
        let answers =
            futures::future::join_all((0..10).map(|_| backlog.get(|| slow_count(&runs)))).await;
        assert!(
            answers.iter().all(|a| a.as_ref() == Some(&stat(1))),
            "{answers:?}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_count_answers_the_scrapes_that_waited_for_it_and_is_not_kept() {
        let backlog = BacklogCount::default();
        let runs = AtomicUsize::new(0);
        let failing = || async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            runs.fetch_add(1, Ordering::SeqCst);
            None
        };
        let answers = futures::future::join_all((0..5).map(|_| backlog.get(failing))).await;
        assert!(answers.iter().all(Option::is_none));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one count for the five");
        // The next scrape counts again.
        assert_eq!(backlog.get(|| slow_count(&runs)).await, Some(stat(2)));
        // A quick count (a small backlog) is not reused for long.
        let quick = BacklogCount::default();
        assert_eq!(quick.get(|| async { Some(stat(7)) }).await, Some(stat(7)));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(quick.get(|| async { Some(stat(8)) }).await, Some(stat(8)));
    }
}
