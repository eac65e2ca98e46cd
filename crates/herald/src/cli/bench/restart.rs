//! `restart`: the real `herald serve` runs as a child process and is killed with SIGKILL in the
//! middle of a burst, then started again on the same data directory. Every event that got a 202
//! must still arrive; the figures are how many were acknowledged before the kill, how long the
//! new process took to listen, and how long until everything acknowledged before the kill had
//! been delivered. The producers keep going through the outage, sending again what was not
//! acknowledged (same event ids, so nothing is stored twice), as a real producer would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::Ctx;
use super::api::Api;
use super::load::{Burst, Counters, Producer};
use super::progress::Progress;
use super::receiver::{Behaviour, Receiver};
use super::report::{Outcome, mib, thousands};
use super::scenarios::{Finished, measure, round3, wait_delivered};
use super::server::{Child, temp_data_dir};

/// How long deliveries may make no progress before the scenario stops waiting.
const STALL: Duration = Duration::from_secs(60);

pub(super) async fn restart(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    if ctx.args.server.is_some() {
        return Ok(Outcome::skipped(
            "restart",
            "it kills and restarts a server of its own, so it does not run with --server",
        ));
    }
    let events = ctx.events(20_000);
    let dir = temp_data_dir(&ctx.parent)?;
    let mut child = Child::start(dir.path(), &ctx.token, ctx.args.endpoint_concurrency).await?;
    let receiver = Receiver::start(
        ctx.clock,
        &[Behaviour::Accept],
        events,
        ctx.args.receiver_threads,
    )
    .await?;
    let api = Api::new(ctx.http.clone(), child.base(), &ctx.token)?;
    let org = api
        .create_org(&format!("bench restart {}", ctx.run_id))
        .await?;
    api.create_webhook(&org, "bench restart", &receiver.url(0), &json!({}))
        .await?;
    let idle = child.memory();
    let producer = Arc::new(
        Producer::new(
            ctx.load_client.clone(),
            child.base(),
            &org,
            api.auth().clone(),
            ctx.clock,
        )?
        .shaped(ctx.event_shape()),
    );
    let counters = Arc::new(Counters::new(events));
    let endpoints = receiver.endpoints().clone();
    let progress = Progress::start("restart", counters.clone(), endpoints.clone(), None);

    let plan = Burst {
        events,
        batch: 1,
        connections: ctx.args.connections,
        patience: Duration::from_secs(60),
    };
    let load = {
        let (producer, counters) = (producer.clone(), counters.clone());
        tokio::spawn(async move { producer.burst(plan, &counters).await })
    };
    while counters.acked() < events / 2 && !load.is_finished() {
        if child.exited() {
            anyhow::bail!(
                "the server exited by itself during the burst:\n{}",
                child.recent_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let peak_before_kill = child.memory();
    child.kill().await;
    // A 202 read just before the kill is counted a moment after it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let acked_before_kill = counters.acked_set.snapshot();
    let acked_at_kill = counters.acked();
    let delivered_at_kill = endpoints.delivered(&[0]);
    note!(
        "[restart] killed the server (SIGKILL) after {} acknowledged, {} delivered; restarting",
        thousands(acked_at_kill),
        thousands(delivered_at_kill)
    );

    let restarted_at = Instant::now();
    let restarted = Child::start(dir.path(), &ctx.token, ctx.args.endpoint_concurrency).await?;
    let listening_s = restarted_at.elapsed().as_secs_f64();
    producer.retarget(restarted.base(), &org)?;
    let (mut recovered_s, mut resumed_s) = (None, None);
    let mut moved = (endpoints.delivered(&[0]), Instant::now());
    let at_restart = moved.0;
    while recovered_s.is_none() || resumed_s.is_none() {
        let now = endpoints.delivered(&[0]);
        if recovered_s.is_none() && endpoints.get(0).seen().missing_from(&acked_before_kill) == 0 {
            recovered_s = Some(restarted_at.elapsed().as_secs_f64());
        }
        if resumed_s.is_none() && now > at_restart {
            resumed_s = Some(restarted_at.elapsed().as_secs_f64());
        }
        if now != moved.0 {
            moved = (now, Instant::now());
        } else if moved.1.elapsed() > STALL || (load.is_finished() && now >= counters.acked()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = load.await;
    wait_delivered(&endpoints, &[0], counters.acked(), STALL).await;
    progress.stop().await;
    let after = restarted.memory();
    let lost_before_kill = endpoints.get(0).seen().missing_from(&acked_before_kill);
    let lost = endpoints
        .get(0)
        .seen()
        .missing_from(&counters.acked_set.snapshot());
    let mut restarted = restarted;
    restarted.kill().await;
    receiver.stop().await;
    drop(dir);

    let mut o = Outcome::new("restart");
    measure(
        &mut o,
        &Finished::one_endpoint(counters.clone(), endpoints.clone()),
    );
    o.complete = o.complete && lost == 0;
    o.figure("acked_before_kill", acked_at_kill);
    o.figure("delivered_before_kill", delivered_at_kill);
    o.figure("restart_to_listening_s", round3(listening_s));
    if let Some(s) = recovered_s {
        o.figure("restart_to_recovered_s", round3(s));
    }
    if let Some(s) = resumed_s {
        o.figure("restart_to_first_delivery_s", round3(s));
    }
    o.figure("lost", lost);
    let failed_requests = counters.failures.load(std::sync::atomic::Ordering::Relaxed);
    o.figure("failed_requests", failed_requests);
    if failed_requests > 0 {
        o.note(format!(
            "{} requests failed while the server was down and were sent again (their events' ids make that safe)",
            thousands(failed_requests)
        ));
    }
    if let Some(m) = idle {
        o.figure("server_rss_idle_mib", mib(m.rss_kib));
    }
    if let Some(m) = peak_before_kill {
        o.figure("server_rss_peak_before_kill_mib", mib(m.peak_kib));
    }
    if let Some(m) = after {
        o.figure("server_rss_peak_after_restart_mib", mib(m.peak_kib));
    }
    let duplicates = endpoints
        .get(0)
        .duplicates
        .load(std::sync::atomic::Ordering::Relaxed);
    o.note(format!(
        "SIGKILL after {} of {} events were acknowledged ({} delivered by then); the new process listened after {:.2} s",
        thousands(acked_at_kill),
        thousands(events),
        thousands(delivered_at_kill),
        listening_s
    ));
    let pending_at_kill = acked_at_kill.saturating_sub(delivered_at_kill);
    o.note(match recovered_s {
        Some(s) => format!(
            "the {} acknowledged but not yet delivered at the kill (or not yet recorded as delivered) were all delivered {s:.2} s after the restart began; deliveries resumed after {}; lost: {lost_before_kill} of those, {lost} in all; {} delivered twice (at least once, as promised)",
            thousands(pending_at_kill),
            resumed_s.map_or("?".into(), |r| format!("{r:.2} s")),
            thousands(duplicates)
        ),
        None => format!(
            "{} events acknowledged before the kill were NOT delivered",
            thousands(lost_before_kill)
        ),
    });
    if let Some(m) = idle {
        o.note(format!(
            "the herald serve process alone: {:.1} MiB RSS idle after setup",
            mib(m.rss_kib)
        ));
    }
    Ok(o)
}
