//! `backlog`: deliveries pile up (a million by default) for a webhook whose endpoint is down,
//! answering 503 as a load balancer with no backend does; then the endpoint comes back. It shows
//! whether memory stays bounded while they wait (peak RSS) and how fast the pile drains.
//!
//! Herald treats a failing endpoint with a circuit breaker: after ten failures it stops sending
//! and probes once after a cool-down of 30 s, doubling while the probes fail (up to 10 min, and a fifth more). So
//! "then up" is the endpoint answering again plus a recover call for anything that ran out of
//! attempts; the first delivery comes with the next probe, and that wait is reported apart from
//! the drain rate. The server runs as a `herald serve` child process, so that the memory
//! measured is the server's alone, without the bench's producers and receiver.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::Ctx;
use super::load::{Burst, Counters, events_per_request};
use super::progress::Progress;
use super::receiver::Behaviour;
use super::report::{Outcome, mib, thousands};
use super::scenarios::{Finished, Prepared, measure, note_limit, round3};
use super::server::Memory;

/// The longest a probe can be away (the breaker's ceiling), plus a margin.
const PROBE_CEILING: Duration = Duration::from_secs(11 * 60);
/// Recover again when nothing has arrived for this long.
const RECOVER_AGAIN: Duration = Duration::from_secs(30);

pub(super) async fn backlog(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let n = ctx.args.backlog;
    let since = (chrono::Utc::now() - chrono::Duration::minutes(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // Retries every 5 s, then one a day later: a schedule that outlasts the run, so that the
    // open circuit holds the backlog pending rather than failing it past its schedule's end.
    let retries: Vec<u32> = std::iter::once(0)
        .chain([5; 18])
        .chain(std::iter::once(86_400))
        .collect();
    let hook = (Behaviour::Down, json!({ "retry_schedule": retries }));
    let server = ctx.server_process().await?;
    let process = server.process();
    let run = Prepared::start_on(server, ctx, "backlog", &[hook], n).await?;
    let idle = run.server.memory();
    run.server.reset_peak_memory();
    let peak_sampled = Arc::new(AtomicU64::new(0));
    let up = Arc::new(AtomicBool::new(false));
    let drained = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::new(n));
    let endpoints = run.receiver.endpoints().clone();
    let progress = Progress::start(
        "backlog",
        counters.clone(),
        endpoints.clone(),
        Some(memory_line(
            process,
            peak_sampled.clone(),
            [up.clone(), drained.clone()],
            endpoints.clone(),
        )),
    );

    let fill_started = Instant::now();
    let plan = Burst {
        events: n,
        batch: events_per_request(1000, ctx.args.event_bytes),
        connections: ctx.args.connections.min(4),
        patience: Duration::from_secs(60),
    };
    run.producer.burst(plan, &counters).await;
    let fill_s = fill_started.elapsed().as_secs_f64();
    let pending = run.api.pending(&run.hooks[0]).await.ok().flatten();
    let with_backlog = run.server.memory();

    let up_at = ctx.clock.now_us();
    endpoints.set(0, Behaviour::Accept);
    up.store(true, Ordering::Relaxed);
    let mut recovered = run.api.recover(&run.org, &run.hooks[0], &since).await?;
    let expected = counters.acked();
    let mut last = (endpoints.delivered(&[0]), Instant::now(), Instant::now());
    loop {
        let now = endpoints.delivered(&[0]);
        if now >= expected {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now(), Instant::now());
        } else if last.1.elapsed() > PROBE_CEILING {
            break;
        } else if last.2.elapsed() > RECOVER_AGAIN {
            recovered += run.api.recover(&run.org, &run.hooks[0], &since).await?;
            last.2 = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = run.server.memory();
    // Before the wait below: a webhook's limit goes with its task, after a minute without work.
    let limit = run
        .api
        .concurrency_limit(&run.hooks[0])
        .await
        .ok()
        .flatten();
    let settled = settle(&run.server, ctx.args.after_drain_secs, &drained).await;
    progress.stop().await;
    run.stop(ctx.args.keep_orgs).await;

    let mut o = Outcome::new("backlog");
    let endpoint = endpoints.get(0);
    let (first, last_arrival) = (endpoint.arrivals.first(), endpoint.arrivals.last());
    measure(
        &mut o,
        &Finished::one_endpoint(counters.clone(), endpoints.clone()),
    );
    // Here the rate that matters is the drain's, from the first delivery after "up"; and every
    // event's latency is mostly the time the endpoint was down.
    o.end_to_end_per_s = None;
    o.latency_ms = None;
    o.figure("backlog", n);
    o.figure("fill_s", round3(fill_s));
    if let Some(p) = pending {
        o.figure("pending_when_up", p);
    }
    o.figure("recovered_from_failed", recovered);
    if let Some(first) = first {
        o.figure(
            "first_delivery_after_up_s",
            round3(first.saturating_sub(up_at) as f64 / 1e6),
        );
    }
    if let (Some(first), Some(last)) = (first, last_arrival) {
        o.figure("drain_s", round3((last - first) as f64 / 1e6));
    }
    o.figure(
        "requests_while_down",
        endpoint.requests().saturating_sub(o.deliveries),
    );
    let peak_kib = after
        .map(|m| m.peak_kib)
        .unwrap_or(0)
        .max(peak_sampled.load(Ordering::Relaxed));
    let memory_note = match (idle, with_backlog, after) {
        (Some(idle), Some(full), Some(drained)) => {
            o.figure("rss_idle_mib", mib(idle.rss_kib));
            o.figure("rss_with_backlog_mib", mib(full.rss_kib));
            o.figure("rss_peak_mib", mib(peak_kib));
            o.figure("rss_drained_mib", mib(drained.rss_kib));
            let later = settled.map_or(String::new(), |m| {
                o.figure("rss_after_drain_mib", mib(m.rss_kib));
                format!(
                    ", {} s after it {:.1} MiB",
                    ctx.args.after_drain_secs,
                    mib(m.rss_kib)
                )
            });
            format!(
                "the herald serve process: RSS idle {:.1} MiB, with the backlog stored {:.1} MiB, peak {:.1} MiB, as the last delivery arrived {:.1} MiB{later}",
                mib(idle.rss_kib),
                mib(full.rss_kib),
                mib(peak_kib),
                mib(drained.rss_kib),
            )
        }
        _ => "memory not measured (with --server it is not; otherwise /proc could not be read)"
            .into(),
    };
    o.note(format!(
        "{} events stored in {:.1} s while the endpoint answered 503 ({} pending by /metrics when it came back)",
        thousands(counters.acked()),
        fill_s,
        pending.map_or("?".into(), thousands),
    ));
    if let (Some(first), Some(last)) = (first, last_arrival) {
        o.note(format!(
            "first delivery {:.1} s after the endpoint came back (the circuit breaker's next probe); then {} deliveries in {:.1} s: {} /s",
            first.saturating_sub(up_at) as f64 / 1e6,
            thousands(o.deliveries),
            (last - first) as f64 / 1e6,
            o.deliveries_per_s.map_or("?".into(), |r| thousands(r.round() as u64)),
        ));
    }
    note_limit(&mut o, limit, ctx);
    o.note(memory_note);
    Ok(o)
}

/// The server's memory `secs` after the drain (`None` when not watched or not measured): it
/// gives back what the backlog took every 60 s (`service/memory.rs`). The progress line says
/// what is awaited meanwhile.
async fn settle(server: &super::server::Server, secs: u64, drained: &AtomicBool) -> Option<Memory> {
    if secs == 0 {
        return None;
    }
    server.memory()?;
    drained.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    server.memory()
}

/// The memory part of the progress line: the server process's RSS (`process` as `/proc` names
/// it, if it can be seen); keeps the highest seen in `peak`.
fn memory_line(
    process: Option<String>,
    peak: Arc<AtomicU64>,
    [up, drained]: [Arc<AtomicBool>; 2],
    endpoints: Arc<super::receiver::Endpoints>,
) -> super::progress::Extra {
    Box::new(move || {
        // Until the circuit's probe goes (up to its 30 s cool-down), nothing moves: say why.
        let state = match (up.load(Ordering::Relaxed), endpoints.delivered(&[0]) > 0) {
            _ if drained.load(Ordering::Relaxed) => {
                "deliveries done, watching the server give memory back"
            }
            (false, _) => "endpoint down",
            (true, false) => "endpoint up, waiting for the circuit's next probe",
            (true, true) => "endpoint up",
        };
        let m = process.as_deref().and_then(Memory::of);
        Some(match m {
            Some(m) => {
                peak.fetch_max(m.rss_kib, Ordering::Relaxed);
                format!("{state}  RSS {:.0} MiB", mib(m.rss_kib))
            }
            None => state.to_owned(),
        })
    })
}
