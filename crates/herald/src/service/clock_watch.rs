//! Watches the wall clock, which every stored time is read by: retry schedules, circuit
//! cool-downs, leases, retention. A step of the system clock (an NTP correction, a virtual
//! machine resumed, a date fixed by hand) moves all of them at once, and on PostgreSQL a node
//! whose clock differs from the others' by more than a lease's margin can take deliveries
//! another node still holds and send them twice. Herald cannot tell which clock is right; it
//! says what happened, once, so that an operator sees why deliveries are late or doubled.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use herald_core::Timestamp;

use crate::app::AppState;

/// How often the clock is looked at.
const EVERY: Duration = Duration::from_secs(10);
/// A step smaller than this is ordinary drift, or the time it took to look.
const STEP_MS: i64 = 2_000;
/// The difference from the database's clock above which a node says so: the lease margin
/// (2 s) is what absorbs differences between nodes, and two nodes off in opposite directions
/// use it up between them.
const OFFSET_MS: i64 = 1_000;
/// A lasting difference from the database's clock is said again after this long.
const REPEAT: Duration = Duration::from_secs(600);

/// Looks every [`EVERY`] until `shutdown` turns true.
pub async fn run(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut last = (Instant::now(), state.clock.now());
    let mut offset_said: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let now = (Instant::now(), state.clock.now());
        let step = step_ms(last, now);
        if step.abs() >= STEP_MS {
            let (way, due) = if step < 0 {
                ("back", "later")
            } else {
                ("forward", "sooner")
            };
            tracing::warn!(
                step_seconds = step / 1000,
                "the system clock stepped {way} by {}: retries, circuit cool-downs and leases scheduled before come due that much {due} than meant (a step forward also counts as time passed for retry schedules, disabling failing webhooks and retention); keep the clock in sync (NTP) rather than stepping it",
                in_words(step.abs())
            );
        }
        last = now;
        if let Ok(Some(offset)) = offset_from_database(&state).await {
            let said_lately = offset_said.is_some_and(|at| at.elapsed() < REPEAT);
            if offset.abs() > OFFSET_MS && !said_lately {
                let way = if offset > 0 { "ahead of" } else { "behind" };
                tracing::warn!(
                    offset_ms = offset,
                    "this node's clock is {} {way} the database server's: nodes whose clocks differ by more than 2 s can take each other's leases and send deliveries twice; keep every node's clock in sync (NTP)",
                    in_words(offset.abs())
                );
                offset_said = Some(Instant::now());
            } else if offset.abs() <= OFFSET_MS && offset_said.take().is_some() {
                tracing::info!("this node's clock agrees with the database server's again");
            }
        }
    }
}

/// How far the wall clock moved beyond the time that passed (the monotonic clock) between two
/// looks: negative when it stepped back.
fn step_ms(before: (Instant, Timestamp), after: (Instant, Timestamp)) -> i64 {
    let passed = after.0.duration_since(before.0).as_millis() as i64;
    after.1.as_millis() - before.1.as_millis() - passed
}

/// How far this node's clock is ahead of the database server's (negative: behind), taking the
/// database's answer as read halfway through the round trip. `None` for a store only this node
/// uses.
async fn offset_from_database(state: &AppState) -> herald_core::store::StoreResult<Option<i64>> {
    let sent = state.clock.now();
    let Some(database) = state.store.database_time().await? else {
        return Ok(None);
    };
    let received = state.clock.now();
    Ok(Some(midpoint(sent, received) - database.as_millis()))
}

fn midpoint(a: Timestamp, b: Timestamp) -> i64 {
    a.as_millis() + (b.as_millis() - a.as_millis()) / 2
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
        assert_eq!(
            midpoint(Timestamp::from_millis(10), Timestamp::from_millis(20)),
            15
        );
    }
}
