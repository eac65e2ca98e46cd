//! Guessing tokens, slowed down: each client network may present only so many tokens that are
//! not valid a minute (`--token-failures-per-minute`). Past that, its requests with tokens it
//! has not used before are answered 429 without the token being checked, until its allowance
//! refills. Tokens already admitted from that network still pass, so a producer behind the
//! same proxy as a guesser, or beside a client still sending a revoked key, keeps working,
//! while a weak admin token cannot be guessed at the server's speed.
//!
//! Counted by each node on its own, by the connection's peer address: an IPv6 address by its
//! /64, which one host usually holds whole. `X-Forwarded-For` can be forged, so it is not used.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald_core::metrics::Counter;

/// Client networks remembered at once; past it the one seen longest ago is forgotten, so that
/// a client with many addresses cannot grow the map without bound.
const MAX_NETWORKS: usize = 10_000;
/// Tokens remembered as admitted from one network (a proxy in front of several producers).
const ADMITTED_PER_NETWORK: usize = 16;

/// Where a request came from, as far as counting failures goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network(IpAddr);

impl Network {
    pub fn of(address: IpAddr) -> Self {
        match address.to_canonical() {
            IpAddr::V6(v6) => Network(IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & !(u128::from(u64::MAX)),
            ))),
            v4 => Network(v4),
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Whether a token may be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Go,
    /// Not now: the network's allowance is spent and the token is not one admitted from it.
    Wait(Duration),
}

/// The allowance of every client network, and the tokens admitted from each.
pub struct TokenFailures {
    /// Failures a network may have in a minute, which is also how many it may have at once
    /// after a quiet minute; 0: no limit.
    per_minute: u32,
    networks: Mutex<HashMap<Network, Allowance>>,
    /// Tokens checked and found not valid.
    pub invalid: Counter,
    /// Requests answered 429 without their token being checked.
    pub held_back: Counter,
}

struct Allowance {
    /// Failures the network may still have; refilled at `per_minute` a minute.
    left: f64,
    /// When `left` was last brought up to date.
    at: Instant,
    /// When a token last came from this network, to forget the quietest first.
    seen: Instant,
    /// SHA-256 digests of tokens admitted from this network, the latest last.
    admitted: Vec<[u8; 32]>,
}

impl Allowance {
    fn refill(&mut self, now: Instant, per_minute: u32) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.left = (self.left + elapsed * f64::from(per_minute) / 60.0).min(f64::from(per_minute));
        self.at = now;
    }
}

impl TokenFailures {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            networks: Mutex::default(),
            invalid: Counter::default(),
            held_back: Counter::default(),
        }
    }

    /// Whether a token (its SHA-256) from `network` may be checked now.
    pub fn check(&self, network: Network, digest: &[u8; 32]) -> Check {
        self.check_at(network, digest, Instant::now())
    }

    /// Remembers that a token was valid from `network`: it passes there whatever the
    /// network's allowance. Called for every request a token admits, so it only looks up.
    pub fn admitted(&self, network: Network, digest: &[u8; 32]) {
        self.admitted_at(network, digest, Instant::now());
    }

    /// Counts a token from `network` that was not valid; `true` when this failure spent the
    /// network's allowance (the moment to say so in the log).
    pub fn failed(&self, network: Network, digest: &[u8; 32]) -> bool {
        self.failed_at(network, digest, Instant::now())
    }

    /// The limit per minute, for the message that says it was reached.
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    fn check_at(&self, network: Network, digest: &[u8; 32], now: Instant) -> Check {
        if self.per_minute == 0 {
            return Check::Go;
        }
        let mut networks = self.networks.lock().expect("token failures lock");
        let Some(allowance) = networks.get_mut(&network) else {
            return Check::Go;
        };
        allowance.refill(now, self.per_minute);
        allowance.seen = now;
        if allowance.left >= 1.0 || allowance.admitted.contains(digest) {
            return Check::Go;
        }
        self.held_back.add(1);
        let seconds = (1.0 - allowance.left) * 60.0 / f64::from(self.per_minute);
        Check::Wait(Duration::from_secs_f64(seconds.ceil().max(1.0)))
    }

    fn admitted_at(&self, network: Network, digest: &[u8; 32], now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        let mut networks = self.networks.lock().expect("token failures lock");
        let allowance = self.allowance(&mut networks, network, now);
        allowance.seen = now;
        if !allowance.admitted.contains(digest) {
            if allowance.admitted.len() == ADMITTED_PER_NETWORK {
                allowance.admitted.remove(0);
            }
            allowance.admitted.push(*digest);
        }
    }

    fn failed_at(&self, network: Network, digest: &[u8; 32], now: Instant) -> bool {
        self.invalid.add(1);
        if self.per_minute == 0 {
            return false;
        }
        let mut networks = self.networks.lock().expect("token failures lock");
        let per_minute = self.per_minute;
        let allowance = self.allowance(&mut networks, network, now);
        allowance.refill(now, per_minute);
        allowance.seen = now;
        // A key revoked since it was admitted no longer passes a spent allowance.
        allowance.admitted.retain(|d| d != digest);
        let had_one = allowance.left >= 1.0;
        allowance.left = (allowance.left - 1.0).max(0.0);
        had_one && allowance.left < 1.0
    }

    /// The network's allowance, a full one if it has none yet (forgetting the network seen
    /// longest ago when there are already [`MAX_NETWORKS`]).
    fn allowance<'a>(
        &self,
        networks: &'a mut HashMap<Network, Allowance>,
        network: Network,
        now: Instant,
    ) -> &'a mut Allowance {
        if !networks.contains_key(&network)
            && networks.len() >= MAX_NETWORKS
            && let Some(quietest) = networks.iter().min_by_key(|(_, a)| a.seen).map(|(n, _)| *n)
        {
            networks.remove(&quietest);
        }
        networks.entry(network).or_insert_with(|| Allowance {
            left: f64::from(self.per_minute),
            at: now,
            seen: now,
            admitted: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(address: &str) -> Network {
        Network::of(address.parse().unwrap())
    }

    #[test]
    fn a_network_that_spends_its_allowance_waits_for_it_to_refill() {
        let failures = TokenFailures::new(3);
        let (client, guess) = (net("203.0.113.9"), [7u8; 32]);
        let start = Instant::now();
        assert_eq!(failures.check_at(client, &guess, start), Check::Go);
        assert!(!failures.failed_at(client, &guess, start));
        assert!(!failures.failed_at(client, &guess, start));
        // The third failure spends it, and says so once.
        assert!(failures.failed_at(client, &guess, start));
        assert_eq!(
            failures.check_at(client, &guess, start),
            Check::Wait(Duration::from_secs(20))
        );
        assert!(!failures.failed_at(client, &guess, start));
        // One failure back every 20 s.
        let later = start + Duration::from_secs(10);
        assert_eq!(
            failures.check_at(client, &guess, later),
            Check::Wait(Duration::from_secs(10))
        );
        let later = start + Duration::from_secs(20);
        assert_eq!(failures.check_at(client, &guess, later), Check::Go);
        assert!(failures.failed_at(client, &guess, later));
        // Another network is not held back, nor is the same one after a quiet minute.
        assert_eq!(
            failures.check_at(net("203.0.113.10"), &guess, later),
            Check::Go
        );
        let quiet = later + Duration::from_secs(60);
        for _ in 0..2 {
            assert!(!failures.failed_at(client, &guess, quiet));
        }
        assert_eq!(failures.held_back.get(), 2);
        assert_eq!(failures.invalid.get(), 7);
    }

    #[test]
    fn tokens_admitted_before_still_pass_a_spent_allowance_until_they_fail() {
        let failures = TokenFailures::new(2);
        let client = net("198.51.100.1");
        let (producer, guess) = ([1u8; 32], [2u8; 32]);
        let now = Instant::now();
        failures.admitted_at(client, &producer, now);
        failures.failed_at(client, &guess, now);
        failures.failed_at(client, &guess, now);
        assert!(matches!(
            failures.check_at(client, &guess, now),
            Check::Wait(_)
        ));
        assert_eq!(failures.check_at(client, &producer, now), Check::Go);
        // Revoked meanwhile: it fails once, and is then held back like any other.
        failures.failed_at(client, &producer, now);
        assert!(matches!(
            failures.check_at(client, &producer, now),
            Check::Wait(_)
        ));
        // Only the latest ADMITTED_PER_NETWORK are remembered.
        for i in 0..=ADMITTED_PER_NETWORK {
            failures.admitted_at(client, &[100 + i as u8; 32], now);
        }
        assert!(matches!(
            failures.check_at(client, &[100; 32], now),
            Check::Wait(_)
        ));
        assert_eq!(failures.check_at(client, &[101; 32], now), Check::Go);
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64_and_ipv4_mapped_as_ipv4() {
        assert_eq!(net("2001:db8:1:2:aaaa::1"), net("2001:db8:1:2:bbbb::2"));
        assert_ne!(net("2001:db8:1:2::1"), net("2001:db8:1:3::1"));
        assert_eq!(net("::ffff:192.0.2.1"), net("192.0.2.1"));
        assert_eq!(net("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(net("192.0.2.1").to_string(), "192.0.2.1");
    }

    #[test]
    fn the_networks_remembered_are_bounded_and_the_quietest_forgotten() {
        let failures = TokenFailures::new(1);
        let start = Instant::now();
        let first = Network(IpAddr::from([10, 0, 0, 0]));
        failures.failed_at(first, &[0; 32], start);
        for i in 1..MAX_NETWORKS as u32 {
            let at = start + Duration::from_millis(u64::from(i));
            failures.admitted_at(Network(IpAddr::from(i.to_be_bytes())), &[0; 32], at);
        }
        // The first is still held back (asked as it spent its allowance: asking counts as
        // being seen); one more network forgets it.
        assert!(matches!(
            failures.check_at(first, &[1; 32], start),
            Check::Wait(_)
        ));
        let at = start + Duration::from_secs(30);
        failures.admitted_at(net("192.0.2.1"), &[0; 32], at);
        assert_eq!(failures.networks.lock().unwrap().len(), MAX_NETWORKS);
        assert_eq!(failures.check_at(first, &[1; 32], at), Check::Go);
    }

    #[test]
    fn no_limit_counts_but_never_holds_back() {
        let failures = TokenFailures::new(0);
        let client = net("192.0.2.1");
        for _ in 0..100 {
            assert!(!failures.failed(client, &[3; 32]));
        }
        assert_eq!(failures.check(client, &[3; 32]), Check::Go);
        assert_eq!(failures.invalid.get(), 100);
        assert!(failures.networks.lock().unwrap().is_empty());
    }
}
