//! The scenarios that push events through webhooks and time them: `burst`, `batch`, `fanout`,
//! `latency`, and `slow-endpoint` and `failing-endpoint`, which compare nine healthy webhooks
//! beside a misbehaving one with the same nine alone. (`backlog` and `restart` change the world
//! in the middle of a run and have files of their own.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Ctx;
use super::api::Api;
use super::load::{Burst, Counters, Producer, events_per_request};
use super::measure::Histogram;
use super::progress::Progress;
use super::receiver::{Behaviour, Endpoints, Receiver};
use super::report::{Latency, Outcome, thousands};
use super::server::Server;

/// How long deliveries may make no progress before a scenario stops waiting for them.
const STALL: Duration = Duration::from_secs(30);
/// How long a producer keeps sending a request the server does not take.
const PATIENCE: Duration = Duration::from_secs(30);
/// Webhooks in `fanout`, `slow-endpoint` and `failing-endpoint`.
const FANOUT: usize = 10;

/// A server, a receiver with one endpoint per webhook, and a producer for the organization.
pub(super) struct Prepared {
    pub server: Server,
    pub receiver: Receiver,
    pub api: Api,
    pub org: String,
    pub hooks: Vec<String>,
    pub producer: Arc<Producer>,
}

impl Prepared {
    /// Starts what the scenario needs: each endpoint answers as its behaviour says, and its
    /// webhook is created with the extra fields given beside it.
    pub async fn start(
        ctx: &Ctx,
        label: &str,
        endpoints: &[(Behaviour, Value)],
        capacity: u64,
    ) -> anyhow::Result<Self> {
        Self::start_on(ctx.server().await?, ctx, label, endpoints, capacity).await
    }

    /// Like `start`, on a server the scenario chose.
    pub async fn start_on(
        server: Server,
        ctx: &Ctx,
        label: &str,
        endpoints: &[(Behaviour, Value)],
        capacity: u64,
    ) -> anyhow::Result<Self> {
        let behaviours: Vec<Behaviour> = endpoints.iter().map(|(b, _)| *b).collect();
        let receiver =
            Receiver::start(ctx.clock, &behaviours, capacity, ctx.args.receiver_threads).await?;
        let api = Api::new(ctx.http.clone(), server.base(), server.token())?;
        let org = api
            .create_org(&format!("bench {label} {} {}", ctx.run_id, ctx.round + 1))
            .await?;
        let mut hooks = Vec::with_capacity(endpoints.len());
        for (i, (_, extra)) in endpoints.iter().enumerate() {
            let name = format!("bench {label} {i}");
            hooks.push(
                api.create_webhook(&org, &name, &receiver.url(i), extra)
                    .await?,
            );
        }
        let producer = Arc::new(
            Producer::new(
                ctx.load_client.clone(),
                server.base(),
                &org,
                api.auth().clone(),
                ctx.clock,
            )?
            .shaped(ctx.event_shape()),
        );
        Ok(Self {
            server,
            receiver,
            api,
            org,
            hooks,
            producer,
        })
    }

    /// Stops what the scenario started. On a server given with `--server`, its organization
    /// is deleted (unless `--keep-orgs`), so that its webhooks do not go on retrying towards a
    /// receiver now gone.
    pub async fn stop(self, keep_org: bool) {
        if matches!(self.server, Server::External { .. })
            && !keep_org
            && let Err(e) = self.api.delete_org(&self.org).await
        {
            note!(
                "could not delete the benchmark's organization {} on the server: {e:#}",
                self.org
            );
        }
        self.receiver.stop().await;
        self.server.stop().await;
    }
}

/// What a finished run leaves to measure.
pub(super) struct Finished {
    pub counters: Arc<Counters>,
    pub endpoints: Arc<Endpoints>,
    /// The endpoints that accept: every acknowledged event must reach each of them.
    pub healthy: Vec<usize>,
    /// Each webhook's adaptive concurrency limit at the end of the run, as `/metrics` had it.
    pub limits: Vec<Option<u64>>,
}

impl Finished {
    /// A run with one accepting endpoint whose limit was not read.
    pub fn one_endpoint(counters: Arc<Counters>, endpoints: Arc<Endpoints>) -> Self {
        Self {
            counters,
            endpoints,
            healthy: vec![0],
            limits: Vec::new(),
        }
    }
}

/// Posts `events` events (`batch` per request) to webhooks at `endpoints`, waits until the
/// healthy ones have them all (or nothing moves for a while), and stops everything.
async fn burst_through(
    ctx: &Ctx,
    label: &str,
    endpoints: &[(Behaviour, Value)],
    events: u64,
    batch: usize,
) -> anyhow::Result<Finished> {
    let run = Prepared::start(ctx, label, endpoints, events).await?;
    let shared = run.receiver.endpoints().clone();
    let healthy = healthy(endpoints);
    let counters = push_and_wait(ctx, label, &run.producer, &shared, &healthy, events, batch).await;
    // Read while the webhooks' tasks are alive: their limits go when they idle out.
    let mut limits = Vec::with_capacity(run.hooks.len());
    for hook in &run.hooks {
        limits.push(run.api.concurrency_limit(hook).await.ok().flatten());
    }
    run.stop(ctx.args.keep_orgs).await;
    Ok(Finished {
        counters,
        endpoints: shared,
        healthy,
        limits,
    })
}

/// Posts `events` events (`batch` per request) through `producer` over `--connections`, showing
/// progress, and waits until the endpoints `healthy` have every acknowledged one (or nothing
/// moves for a while).
pub(super) async fn push_and_wait(
    ctx: &Ctx,
    label: &str,
    producer: &Arc<Producer>,
    endpoints: &Arc<Endpoints>,
    healthy: &[usize],
    events: u64,
    batch: usize,
) -> Arc<Counters> {
    let counters = Arc::new(Counters::new(events));
    let progress = Progress::start(label, counters.clone(), endpoints.clone(), None);
    let plan = Burst {
        events,
        batch,
        connections: ctx.args.connections,
        patience: PATIENCE,
    };
    producer.burst(plan, &counters).await;
    let expected = counters.acked() * healthy.len() as u64;
    wait_delivered(endpoints, healthy, expected, STALL).await;
    progress.stop().await;
    counters
}

fn healthy(endpoints: &[(Behaviour, Value)]) -> Vec<usize> {
    (0..endpoints.len())
        .filter(|i| endpoints[*i].0 == Behaviour::Accept)
        .collect()
}

/// Waits until the endpoints `which` have `expected` distinct deliveries between them; false if
/// nothing arrived for `stall`.
pub(super) async fn wait_delivered(
    endpoints: &Endpoints,
    which: &[usize],
    expected: u64,
    stall: Duration,
) -> bool {
    let mut last = endpoints.delivered(which);
    let mut moved = Instant::now();
    loop {
        let now = endpoints.delivered(which);
        if now >= expected {
            return true;
        }
        if now != last {
            last = now;
            moved = Instant::now();
        } else if moved.elapsed() > stall {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fills in the common figures: rates, latency, completeness.
pub(super) fn measure(o: &mut Outcome, f: &Finished) {
    let c = &f.counters;
    o.events = c.acked();
    o.expected_deliveries = o.events * f.healthy.len() as u64;
    o.deliveries = f.endpoints.delivered(&f.healthy);
    let abandoned = c.abandoned.load(std::sync::atomic::Ordering::Relaxed);
    o.complete = o.deliveries >= o.expected_deliveries && abandoned == 0;
    if abandoned > 0 {
        let why = c
            .refusal()
            .map(|r| format!(" (first refusal: {r})"))
            .unwrap_or_default();
        o.note(format!(
            "{} events were never acknowledged{why}",
            thousands(abandoned)
        ));
    }
    let secs = |from: Option<u64>, to: Option<u64>| match (from, to) {
        (Some(from), Some(to)) if to > from => Some((to - from) as f64 / 1e6),
        _ => None,
    };
    let arrivals = f.healthy.iter().map(|i| &f.endpoints.get(*i).arrivals);
    let first_arrival = arrivals.clone().filter_map(|s| s.first()).min();
    let last_arrival = arrivals.filter_map(|s| s.last()).max();
    let first_send = c.sends.first();
    o.ingest_per_s = secs(first_send, c.acks.last()).map(|s| o.events as f64 / s);
    o.deliveries_per_s = secs(first_arrival, last_arrival).map(|s| o.deliveries as f64 / s);
    o.last_delivery_s = secs(first_send, last_arrival);
    o.end_to_end_per_s = o.last_delivery_s.map(|s| o.events as f64 / s);
    let latency = Histogram::default();
    let mut duplicates = 0;
    for i in &f.healthy {
        let e = f.endpoints.get(*i);
        latency.merge(&e.latency);
        duplicates += e.duplicates.load(std::sync::atomic::Ordering::Relaxed);
    }
    o.latency_ms = Latency::of(&latency);
    o.figure("duplicates", duplicates);
    o.figure(
        "failed_requests",
        c.failures.load(std::sync::atomic::Ordering::Relaxed),
    );
    if let Some(s) = secs(c.acks.last(), last_arrival) {
        o.figure("tail_after_last_ack_s", round3(s));
    }
}

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn accepting(n: usize) -> Vec<(Behaviour, Value)> {
    vec![(Behaviour::Accept, json!({})); n]
}

/// `burst`: one event per request, as fast as the connections allow.
pub(super) async fn burst(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let events = ctx.events(50_000);
    let f = burst_through(ctx, "burst", &accepting(1), events, 1).await?;
    let mut o = Outcome::new("burst");
    measure(&mut o, &f);
    o.note(format!(
        "{} events, one per request, over {} connections, to one webhook",
        thousands(events),
        ctx.args.connections
    ));
    Ok(o)
}

/// `batch`: the same with `--batch-size` events per request.
pub(super) async fn batch(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let events = ctx.events(200_000);
    let size = events_per_request(ctx.args.batch_size, ctx.args.event_bytes);
    let f = burst_through(ctx, "batch", &accepting(1), events, size).await?;
    let mut o = Outcome::new("batch");
    measure(&mut o, &f);
    o.figure("batch_size", size);
    o.note(format!(
        "{} events in requests of {size} over {} connections, to one webhook",
        thousands(events),
        ctx.args.connections
    ));
    note_limit(&mut o, f.limits.first().copied().flatten(), ctx);
    Ok(o)
}

/// Notes the adaptive concurrency limit the webhook had reached by the end of the run.
pub(super) fn note_limit(o: &mut Outcome, limit: Option<u64>, ctx: &Ctx) {
    if let Some(limit) = limit {
        o.figure("concurrency_limit", limit);
        // A --server has its own HERALD_ENDPOINT_CONCURRENCY, which the bench cannot read.
        let ceiling = match ctx.args.server {
            Some(_) => "the server's HERALD_ENDPOINT_CONCURRENCY".to_owned(),
            None => format!("--endpoint-concurrency {}", ctx.args.endpoint_concurrency),
        };
        o.note(format!(
            "the webhook ended with {limit} requests in flight allowed (each starts at 16; at most {ceiling})"
        ));
    }
}

/// `fanout`: every event goes to ten webhooks.
pub(super) async fn fanout(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let events = ctx.events(10_000);
    let f = burst_through(ctx, "fanout", &accepting(FANOUT), events, 1).await?;
    let mut o = Outcome::new("fanout");
    measure(&mut o, &f);
    o.note(format!(
        "{} events, one per request, each to {FANOUT} webhooks ({} deliveries)",
        thousands(events),
        thousands(events * FANOUT as u64)
    ));
    Ok(o)
}

/// `latency`: a steady rate for a fixed time; the figures that matter are the quantiles.
pub(super) async fn latency(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let (rate, secs) = (ctx.args.rate, ctx.args.duration);
    let events = (f64::from(rate) * secs as f64).round() as u64;
    let run = Prepared::start(ctx, "latency", &accepting(1), events + 1).await?;
    let counters = Arc::new(Counters::new(events + 1));
    let shared = run.receiver.endpoints().clone();
    let progress = Progress::start("latency", counters.clone(), shared.clone(), None);
    run.producer
        .steady(
            rate,
            Duration::from_secs(secs),
            ctx.args.connections,
            &counters,
        )
        .await;
    wait_delivered(&shared, &[0], counters.acked(), STALL).await;
    progress.stop().await;
    run.stop(ctx.args.keep_orgs).await;
    let sent = counters.sent.load(std::sync::atomic::Ordering::Relaxed);
    let mut o = Outcome::new("latency");
    measure(&mut o, &Finished::one_endpoint(counters, shared));
    o.figure("rate_per_s", rate);
    o.figure("duration_s", secs);
    if sent * 100 < events * 95 {
        o.note(format!(
            "only {} of the {} events were sent in {secs} s: the server did not keep up with {}/s, so these latencies include queueing; try a lower --rate",
            thousands(sent),
            thousands(events),
            thousands(u64::from(rate))
        ));
    }
    o.note(format!(
        "{rate} events/s for {secs} s, one per request; latency runs from just before the producer sends (so it includes the durable 202) to arrival at the receiver"
    ));
    Ok(o)
}

/// Nine healthy webhooks alone: what `slow-endpoint` and `failing-endpoint` compare with.
/// Run once per round (`--repeat`), just before the first comparison of that round.
async fn nine_alone(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    if let Some(b) = ctx.baseline.get(ctx.round) {
        return Ok(b.clone());
    }
    let events = ctx.events(10_000);
    let f = burst_through(ctx, "nine healthy", &accepting(FANOUT - 1), events, 1).await?;
    let mut o = Outcome::new("nine healthy alone");
    measure(&mut o, &f);
    ctx.baseline.push(o.clone());
    Ok(o)
}

/// Runs nine healthy webhooks beside `odd` and compares them with the nine alone.
async fn beside(
    ctx: &mut Ctx,
    name: &str,
    odd: (Behaviour, Value),
) -> anyhow::Result<(Outcome, Arc<Endpoints>)> {
    let alone = nine_alone(ctx).await?;
    let events = ctx.events(10_000);
    let mut endpoints = accepting(FANOUT - 1);
    endpoints.push(odd);
    let f = burst_through(ctx, name, &endpoints, events, 1).await?;
    let mut o = Outcome::new(name);
    measure(&mut o, &f);
    if !alone.complete {
        o.complete = false;
        o.note("the comparison run without the odd webhook did not deliver everything");
    }
    // The comparison itself is written once the runs are in (see `repeat.rs`).
    if let Some(before) = alone.deliveries_per_s {
        o.figure("healthy_deliveries_per_s_alone", before.round());
    }
    if let Some(l) = alone.latency_ms {
        o.figure("healthy_p99_ms_alone", l.p99);
    }
    Ok((o, f.endpoints))
}

/// `slow-endpoint`: one webhook's endpoint answers only after the webhook's timeout.
pub(super) async fn slow_endpoint(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let slow = (
        Behaviour::Slow(Duration::from_millis(2000)),
        json!({ "timeout_ms": 1000 }),
    );
    let (mut o, endpoints) = beside(ctx, "slow-endpoint", slow).await?;
    let odd = endpoints.get(FANOUT - 1);
    o.figure("slow_endpoint_requests", odd.requests());
    o.note(format!(
        "the slow endpoint (timeout 1 s, answers after 2 s) got {} requests; none can succeed",
        thousands(odd.requests())
    ));
    Ok(o)
}

/// `failing-endpoint`: one webhook's endpoint answers 500 to everything, with retries coming due
/// every second, to see that they do not starve first attempts.
pub(super) async fn failing_endpoint(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let failing = (
        Behaviour::Fail,
        json!({ "retry_schedule": [0, 1, 1, 1, 1, 1, 1, 1, 1, 1] }),
    );
    let (mut o, endpoints) = beside(ctx, "failing-endpoint", failing).await?;
    let odd = endpoints.get(FANOUT - 1);
    let (requests, first) = (odd.requests(), odd.first_attempts());
    o.figure("failing_endpoint_requests", requests);
    o.figure("failing_endpoint_first_attempts", first);
    o.figure("failing_endpoint_retries", requests.saturating_sub(first));
    o.note(format!(
        "the failing endpoint (500, retries every 1 s) got {} requests: {} first attempts, {} retries",
        thousands(requests),
        thousands(first),
        thousands(requests.saturating_sub(first))
    ));
    if requests >= 10 && requests == first && requests < o.events {
        // Ten failures in a row open a webhook's circuit: what it had waits for a probe (30 s
        // on), so a short run sees few of its requests, and retries only if it outlasts that.
        o.note(
            "its circuit opened after 10 failures in a row: its deliveries then wait for a probe 30 s later, so a run shorter than that shows no retries",
        );
    }
    Ok(o)
}
