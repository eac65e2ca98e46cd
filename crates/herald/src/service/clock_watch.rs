//! Watches the wall clock, which every stored time is read by: retry schedules, circuit
//! cool-downs, leases, retention. On PostgreSQL the nodes' leases are times every node compares
//! with its own clock, so a node whose clock is off by more than a lease's margin would take
//! deliveries another node still holds and send them twice (a node two minutes ahead, with
//! 30 s leases, sent everything twice): there a node keeps its times on the database server's
//! clock (a [`CorrectedClock`](herald_core::CorrectedClock), set right at start and every
//! [`EVERY`], counting the time between by the monotonic clock), and says how far its own is
//! off. A step of the clock a node goes by (the system
//! clock on SQLite; on PostgreSQL, the database server's) moves every schedule at once; Herald
//! cannot tell which reading is right, and says what happened, once.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use herald_core::store::{Store, StoreResult};
use herald_core::{Clock, SystemClock, Timestamp};

use crate::app::AppState;

/// How often the clock is looked at.
const EVERY: Duration = Duration::from_secs(10);
/// A step smaller than this is ordinary drift, or the time it took to look.
const STEP_MS: i64 = 2_000;
/// A difference from the database server's clock smaller than this is left alone: the round
/// trip it is measured over blurs it anyway, and every correction moves this node's times.
const CORRECT_MS: i64 = 50;
/// How far a node's own clock may be off the database server's before it says so.
const OFFSET_MS: i64 = 1_000;
/// A lasting difference is said again after this long.
const REPEAT: Duration = Duration::from_secs(600);

/// Sets `clock` right against the database server's, for a store several nodes share; answers
/// how far this machine's own clock is off it (positive: ahead), or `None` for a store only this
/// node uses (or one that did not answer, or too slowly to tell).
pub async fn align(store: &dyn Store, clock: &dyn Clock) -> Option<i64> {
    let (off, round_trip) = offset_from_database(store, clock).await.ok()??;
    // Read again every `EVERY`: between readings the node counts time by the monotonic clock,
    // so that a step of the machine's clock moves nothing.
    clock.hold_steady();
    // What the machine's own clock reads, against the database server's.
    let own = off - (clock.now().as_millis() - SystemClock.now().as_millis());
    let (correct, tell) = judge(off, round_trip);
    if correct {
        clock.correct(-off);
    }
    tell.then_some(own)
}

/// What a reading `off` (ms, ahead of the database server) taken over `round_trip` (ms) is
/// good for: correcting the clock, and telling how far the machine's is off. Within the round
/// trip it says nothing, as the answer may have been read at any time in it: under load,
/// corrections by such noise would move this node's times back and forth every look. A reading
/// that took longer than an offset worth telling (a wait for a connection, a lock) tells none:
/// a node waiting 8 s for a connection said that its clock was 4 s behind.
fn judge(off: i64, round_trip: i64) -> (bool, bool) {
    (
        off.abs() >= CORRECT_MS.max(round_trip),
        round_trip <= OFFSET_MS,
    )
}

/// Says, at start, how far this node's clock is from the database server's if that matters.
pub fn tell_offset(offset: i64) {
    if offset.abs() > OFFSET_MS {
        tracing::warn!(offset_ms = offset, "{}", offset_words(offset));
    }
}

/// How far the newest stored event may be ahead of the clock at start before it is said: a
/// clock set back since it was stored (by hand, or a machine's clock reset) holds every
/// schedule made then until it catches up.
const BEHIND_MS: i64 = 60_000;

/// Says, at start, that the clock is behind the newest event stored (on a store whose times
/// come from this node's clock), and what that does.
pub async fn tell_if_behind_the_stored(store: &dyn Store, clock: &dyn Clock) {
    let Ok(Some(newest)) = store.newest_event_at().await else {
        return;
    };
    if let Some(said) = behind_the_stored(newest, clock.now()) {
        tracing::warn!(newest_event = %newest.to_rfc3339_secs(), "{said}");
    }
}

fn behind_the_stored(newest: Timestamp, now: Timestamp) -> Option<String> {
    let behind = newest.as_millis() - now.as_millis();
    (behind > BEHIND_MS).then(|| {
        format!(
            "the clock is {} behind the newest event stored: it was set back since (or ran \
             ahead then). Retries and cool-downs scheduled then wait until it catches up; check \
             the clock (NTP), and to send a delivery that waits now, run `herald deliveries \
             retry` for it",
            in_words(behind)
        )
    })
}

fn offset_words(offset: i64) -> String {
    let way = if offset > 0 { "ahead of" } else { "behind" };
    format!(
        "this machine's clock is {} {way} the database server's; Herald keeps this node's times on the database server's clock (leases, schedules), so that nodes agree, but keep every machine's clock in sync (NTP)",
        in_words(offset.abs())
    )
}

/// Looks every [`EVERY`] until `shutdown` turns true.
pub async fn run(state: AppState, mut shutdown: watch::Receiver<bool>) {
    // A difference found at start was said then (`tell_offset`).
    let mut offset_said = align(&*state.store, &*state.clock)
        .await
        .filter(|offset| offset.abs() > OFFSET_MS)
        .map(|offset| (Instant::now(), offset));
    let mut last = (Instant::now(), state.clock.now());
    let which = if state.store.signals().is_some() {
        "the database server's clock"
    } else {
        "the system clock"
    };
    loop {
        let slept_from = Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => return,
        }
        if let Some(stalled) = stalled_for(slept_from.elapsed()) {
            tracing::warn!(
                stalled_seconds = stalled.as_secs(),
                "this process did not run for at least {} (stopped, frozen by its hypervisor, or starved of CPU): what waited meanwhile timed out as if the database or an endpoint had been slow, and leases held may have passed to other nodes, which send those deliveries",
                in_words(stalled.as_millis() as i64)
            );
        }
        // Set right first: a step of this machine's clock alone is then no step at all.
        if let Some(offset) = align(&*state.store, &*state.clock).await {
            // Said again after a while, or at once if it moved since (the machine's clock
            // stepped again: "24 h ahead" stood for a minute after it was 48).
            let said_lately = offset_said.is_some_and(|(at, said)| {
                at.elapsed() < REPEAT && (offset - said).abs() <= OFFSET_MS
            });
            if offset.abs() > OFFSET_MS && !said_lately {
                tracing::warn!(offset_ms = offset, "{}", offset_words(offset));
                offset_said = Some((Instant::now(), offset));
            } else if offset.abs() <= OFFSET_MS && offset_said.take().is_some() {
                tracing::info!("this machine's clock agrees with the database server's again");
            }
        }
        let now = (Instant::now(), state.clock.now());
        let step = step_ms(last, now);
        if step.abs() >= STEP_MS {
            let (way, due, remedy) = if step < 0 {
                (
                    "back",
                    "later",
                    " (`herald deliveries retry-waiting` sends a webhook's now)",
                )
            } else {
                ("forward", "sooner", "")
            };
            tracing::warn!(
                step_seconds = step / 1000,
                "{which} stepped {way} by {}: retries, circuit cool-downs and leases scheduled before come due that much {due} than meant{remedy} (a step forward also counts as time passed for retry schedules, disabling failing webhooks and retention); keep the clock in sync (NTP) rather than stepping it",
                in_words(step.abs())
            );
        }
        last = now;
    }
}

/// How much longer than [`EVERY`] a look's sleep took, if past [`STALL`]: the process did not
/// run meanwhile (a timer is late by that much only then), which is said, as the timeouts it
/// causes are otherwise blamed on whatever they waited for.
fn stalled_for(slept: Duration) -> Option<Duration> {
    slept.checked_sub(EVERY).filter(|late| *late >= STALL)
}

/// A look's sleep this late is a stall of the process.
const STALL: Duration = Duration::from_secs(5);

/// How far the wall clock moved beyond the time that passed (the monotonic clock) between two
/// looks: negative when it stepped back.
fn step_ms(before: (Instant, Timestamp), after: (Instant, Timestamp)) -> i64 {
    let passed = after.0.duration_since(before.0).as_millis() as i64;
    after.1.as_millis() - before.1.as_millis() - passed
}

/// How far `clock` is ahead of the database server's (negative: behind), taking the database's
/// answer as read halfway through the round trip, and how long that round trip took. `None`
/// for a store only this node uses.
async fn offset_from_database(
    store: &dyn Store,
    clock: &dyn Clock,
) -> StoreResult<Option<(i64, i64)>> {
    let (sent, started) = (clock.now(), Instant::now());
    let Some(database) = store.database_time().await? else {
        return Ok(None);
    };
    let round_trip = started.elapsed().as_millis() as i64;
    Ok(Some((
        sent.as_millis() + round_trip / 2 - database.as_millis(),
        round_trip,
    )))
}

/// `3 s`, `12 min`, `2.5 h`, `6 days`.
fn in_words(ms: i64) -> String {
    let s = ms as f64 / 1000.0;
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} days", s / 86_400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_look_that_slept_well_past_its_time_is_a_stall() {
        assert_eq!(stalled_for(EVERY), None);
        assert_eq!(stalled_for(EVERY + Duration::from_secs(2)), None);
        assert_eq!(
            stalled_for(EVERY + Duration::from_secs(120)),
            Some(Duration::from_secs(120))
        );
    }

    /// A reading corrects the clock only past its round trip, and tells the machine's offset
    /// only if it came back sooner than an offset worth telling.
    #[test]
    fn a_slow_reading_corrects_and_tells_nothing() {
        assert_eq!(judge(120_000, 3), (true, true));
        assert_eq!(judge(30, 3), (false, true), "under the smallest correction");
        assert_eq!(
            judge(-4_000, 8_000),
            (false, false),
            "a wait for a connection"
        );
        assert_eq!(judge(9_000, 2_000), (true, false));
    }

    /// A start with the clock two days behind the newest event stored says so; a minute's
    /// difference, or a clock ahead, says nothing.
    #[test]
    fn a_clock_behind_the_newest_event_is_said_at_start() {
        let newest = Timestamp::from_millis(1_000_000_000_000);
        let said = behind_the_stored(newest, newest.plus_secs(-2 * 86_400)).unwrap();
        assert!(
            said.starts_with("the clock is 2.0 days behind the newest event stored"),
            "{said}"
        );
        assert_eq!(behind_the_stored(newest, newest.plus_secs(-60)), None);
        assert_eq!(behind_the_stored(newest, newest.plus_secs(3_600)), None);
    }

    /// A node whose clock reads two minutes ahead is set right against the database server's
    /// (here on the same machine, so the machine's own clock agrees with it); once right, it
    /// is left alone. A store only this node uses sets nothing.
    #[tokio::test]
    async fn a_node_keeps_its_times_on_the_database_servers_clock() {
        let ahead = herald_core::CorrectedClock::default();
        ahead.correct(120_000);
        let dir = tempfile::tempdir().unwrap();
        let alone = herald_store::SqliteStore::open(dir.path().join("herald.db")).unwrap();
        assert_eq!(align(&alone, &ahead).await, None);
        assert_eq!(ahead.correction_ms(), 120_000);
        let Ok(url) = std::env::var("HERALD_TEST_DATABASE_URL") else {
            return;
        };
        let shared = herald_store::PostgresStore::new(
            &url,
            herald_store::PostgresOptions { pool_size: 1 },
            herald_store::cipher::SecretCipher::none(),
        )
        .unwrap();
        // Each reading is as exact as its round trip, which a loaded machine stretches (73 ms
        // once, with a test suite and a load beside it): "right" is within a second here, where
        // the node was two minutes off.
        const NOISE_MS: i64 = 1_000;
        let own = align(&shared, &ahead).await.expect("the server's clock");
        assert!(own.abs() < NOISE_MS, "this machine's clock is right: {own}");
        let database = shared.database_time().await.unwrap().unwrap();
        let gap = ahead.now().as_millis() - database.as_millis();
        assert!(gap.abs() < NOISE_MS, "{gap} ms from the database's clock");
        let corrected = ahead.correction_ms();
        assert!(corrected.abs() < NOISE_MS, "{corrected}");
        align(&shared, &ahead).await.unwrap();
        assert_eq!(ahead.correction_ms(), corrected, "left alone once right");
    }

    #[test]
    fn a_step_is_what_the_wall_clock_moved_beyond_the_time_that_passed() {
        let start = Instant::now();
        let t = Timestamp::from_millis(1_000_000);
        let later = start + Duration::from_secs(10);
        // In step: nothing.
        assert_eq!(step_ms((start, t), (later, t.plus_millis(10_000))), 0);
        // Set back an hour meanwhile.
        assert_eq!(
            step_ms((start, t), (later, t.plus_millis(10_000 - 3_600_000))),
            -3_600_000
        );
        // Forward a day.
        assert_eq!(
            step_ms((start, t), (later, t.plus_millis(10_000 + 86_400_000))),
            86_400_000
        );
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(in_words(3_000), "3 s");
        assert_eq!(in_words(720_000), "12 min");
        assert_eq!(in_words(9_000_000), "2.5 h");
        assert_eq!(in_words(6 * 86_400_000), "6.0 days");
    }
}
