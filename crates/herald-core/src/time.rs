//! Time as Herald sees it: millisecond timestamps, and a [`Clock`] that tests can move so retry
//! schedules measured in hours finish in milliseconds.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Invalid;

/// Milliseconds since the Unix epoch, UTC. Serialised as RFC 3339 with milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    pub fn plus_millis(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    pub fn plus_secs(self, secs: i64) -> Self {
        self.plus_millis(secs.saturating_mul(1000))
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.0).unwrap_or_default()
    }

    /// RFC 3339, UTC, with milliseconds: `2026-11-22T20:51:13.123Z`.
    pub fn to_rfc3339(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// RFC 3339, UTC, whole seconds: `2026-11-22T20:51:13Z` (the shape the identity products use).
    pub fn to_rfc3339_secs(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    /// Parses an RFC 3339 time with any offset; `field` names it in the error. The time must
    /// fall within the years 0001 to 9999 in UTC, where Herald writes every time it sends:
    /// `9999-12-31T23:59:59-01:00` would come out as a year 10000 that no receiver can read,
    /// and the year 0000, valid RFC 3339, is one that many cannot (Python's `datetime`, and
    /// OpenAPI validators built on it).
    pub fn parse_rfc3339(raw: &str, field: &str) -> Result<Self, Invalid> {
        let shown = crate::truncate_for_message(raw);
        let t = DateTime::parse_from_rfc3339(raw).map_err(|_| {
            Invalid::new(
                field,
                format!("'{shown}' is not an RFC 3339 time such as 2026-01-31T12:00:00Z"),
            )
        })?;
        let millis = t.timestamp_millis();
        if !(EARLIEST_MS..=LATEST_MS).contains(&millis) {
            return Err(Invalid::new(
                field,
                format!("'{shown}' is outside the years 0001 to 9999 once turned into UTC"),
            ));
        }
        Ok(Self(millis))
    }
}

/// 0001-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z, in milliseconds since 1970.
const EARLIEST_MS: i64 = -62_135_596_800_000;
const LATEST_MS: i64 = 253_402_300_799_999;

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

/// On the wire a time is an RFC 3339 string in UTC with milliseconds.
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::{KnownFormat, ObjectBuilder, SchemaFormat, schema::Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .examples(["2026-01-31T12:00:00.000Z"])
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse_rfc3339(&raw, "time").map_err(serde::de::Error::custom)
    }
}

/// Where "now" comes from. Everything that schedules takes one, never `SystemTime` directly.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;

    /// Moves the clock by `by_ms` to agree with a reference (nodes sharing a database keep
    /// their times on its server's clock), if it is one that can be corrected; answers
    /// whether it was.
    fn correct(&self, _by_ms: i64) -> bool {
        false
    }

    /// The correction applied so far: how far this clock reads from the one it is built on.
    fn correction_ms(&self) -> i64 {
        0
    }

    /// From now on, counts the time that passes by the machine's monotonic clock rather than
    /// reading its wall clock, if it is one that can: for a clock kept on another that is read
    /// again regularly ([`Clock::correct`]), so that a step of the machine's clock moves
    /// nothing between those readings.
    fn hold_steady(&self) {}
}

/// The wall clock, corrected to agree with another (see [`Clock::correct`]): a node sharing
/// a database takes its times from there, so that its leases mean the same to every node
/// whatever the machines' clocks say. Held steady ([`Clock::hold_steady`]), it counts from
/// its last wall-clock reading by the monotonic clock: a step of the machine's clock (by hand,
/// or at a snapshot's restore) no longer moves this node's times for the seconds until the
/// next correction, in which a node stepped a day ahead took the other nodes' leases and sent
/// their deliveries twice.
#[derive(Debug, Default)]
pub struct CorrectedClock {
    correction_ms: AtomicI64,
    /// The wall clock's reading (ms) and the monotonic instant it was taken at, once held steady.
    steady_from: OnceLock<(i64, std::time::Instant)>,
}

impl Clock for CorrectedClock {
    fn now(&self) -> Timestamp {
        let base = match self.steady_from.get() {
            Some((wall, at)) => wall + at.elapsed().as_millis() as i64,
            None => Utc::now().timestamp_millis(),
        };
        Timestamp(base + self.correction_ms.load(Ordering::Relaxed))
    }

    fn hold_steady(&self) {
        self.steady_from
            .get_or_init(|| (Utc::now().timestamp_millis(), std::time::Instant::now()));
    }

    fn correct(&self, by_ms: i64) -> bool {
        self.correction_ms.fetch_add(by_ms, Ordering::Relaxed);
        true
    }

    fn correction_ms(&self) -> i64 {
        self.correction_ms.load(Ordering::Relaxed)
    }
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(Utc::now().timestamp_millis())
    }
}

/// The wall clock plus an offset that only grows: tests call [`ManualClock::advance`] to jump
/// ahead, and time keeps flowing in between, so timeouts and ordering still behave normally.
#[derive(Debug, Default, Clone)]
pub struct ManualClock {
    offset_ms: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        SystemClock
            .now()
            .plus_millis(self.offset_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrected_clock_reads_the_wall_clock_plus_its_corrections() {
        let clock = CorrectedClock::default();
        assert!(clock.correct(120_000));
        assert!(clock.correct(-20_000));
        assert_eq!(clock.correction_ms(), 100_000);
        let ahead = clock.now().as_millis() - SystemClock.now().as_millis();
        assert!((99_990..=100_010).contains(&ahead), "{ahead}");
        assert!(
            !SystemClock.correct(5),
            "the plain wall clock is never corrected"
        );
        // Held steady, it goes on from where it was, corrections and all, and counts the time
        // that passes.
        clock.hold_steady();
        let held = clock.now().as_millis();
        assert!((held - SystemClock.now().as_millis() - 100_000).abs() <= 10);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let passed = clock.now().as_millis() - held;
        assert!((20..=200).contains(&passed), "{passed}");
        assert!(clock.correct(-100_000));
        assert!((clock.now().as_millis() - SystemClock.now().as_millis()).abs() <= 10);
    }

    #[test]
    fn timestamps_format_as_utc_with_milliseconds() {
        let t = Timestamp::from_millis(1_700_000_000_123);
        assert_eq!(t.to_rfc3339(), "2023-11-14T22:13:20.123Z");
        assert_eq!(t.to_rfc3339_secs(), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn an_offset_time_is_converted_to_utc() {
        let t = Timestamp::parse_rfc3339("2023-11-14T23:13:20.123+01:00", "t").unwrap();
        assert_eq!(t.as_millis(), 1_700_000_000_123);
        assert!(Timestamp::parse_rfc3339("yesterday", "t").is_err());
    }

    #[test]
    fn a_manual_clock_jumps_ahead() {
        let clock = ManualClock::new();
        let before = clock.now();
        clock.advance(std::time::Duration::from_secs(3600));
        assert!(clock.now().as_millis() - before.as_millis() >= 3_600_000);
    }

    #[test]
    fn a_time_outside_the_years_0001_to_9999_in_utc_is_refused() {
        let ok = |raw| Timestamp::parse_rfc3339(raw, "t").map(Timestamp::to_rfc3339);
        assert_eq!(
            ok("0001-01-01T00:00:00Z").unwrap(),
            "0001-01-01T00:00:00.000Z"
        );
        assert_eq!(
            ok("9999-12-31T23:59:59.999Z").unwrap(),
            "9999-12-31T23:59:59.999Z"
        );
        for raw in [
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+01:00",
            "0000-06-01T00:00:00Z",
        ] {
            let err = ok(raw).unwrap_err();
            assert!(err.message.contains("0001 to 9999"), "{raw}: {err:?}");
        }
    }
}
