//! Guessing tokens, slowed down: each client network may present only so many tokens that are
//! not valid a minute (`--token-failures-per-minute`). Past that, its requests with tokens it
//! has not used before are answered 429 without the token being checked, until its allowance
//! refills. Tokens already admitted from that network still pass, so a producer behind the
//! same proxy as a guesser keeps working, while a weak admin token cannot be guessed at the
//! server's speed. A token admitted from a network and revoked since is no guess: answered
//! `401` each time, it counts nothing, so that clients still sending an old key (the pods not
//! yet rolled during a key rotation) do not hold back the new one. A tenant cannot push the
//! admin's token out of that memory by using many keys of its own, and pushes out other
//! tenants' keys only behind an address that hundreds of them come from (`Owner`).
//!
//! Counted by each node on its own, by the connection's peer address: an IPv6 address by its
//! /64, which one host usually holds whole. `X-Forwarded-For` can be forged, so it is not used.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald_core::metrics::Counter;

/// Client networks remembered at once. Past it the quietest tenth are forgotten together, so
/// that a client with many addresses cannot grow the map without bound, and forgetting costs
/// one pass over it per thousand new networks, not one per network.
const MAX_NETWORKS: usize = 10_000;
/// Tokens remembered as admitted from one network, the least recently used forgotten first (a
/// proxy in front of many producers). Large beside `ADMITTED_PER_ORG`, so that a tenant using
/// many keys can take the place of others' only behind an address that more than 238 other
/// tokens come from (its 16 and the operator's two fill the rest); a network holds only tokens
/// that were valid, 48 bytes each.
const ADMITTED_PER_NETWORK: usize = 256;
/// Of those, the most one organization's keys hold: past it, a new key of that organization
/// takes the place of its own least recently used.
const ADMITTED_PER_ORG: usize = 16;
/// Tokens remembered as admitted from one network and revoked since, the least recently sent
/// forgotten first.
const REVOKED_PER_NETWORK: usize = 16;

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
    Go(Pass),
    /// Not now: the network's allowance is spent and the token is not one admitted from it.
    Wait(Duration),
}

/// Why a token may be checked, which says what its outcome changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Admitted from this network before: it passes whatever the allowance.
    Known,
    /// New here: one failure of the allowance is held for it until it turns out valid (given
    /// back) or not (kept), so that many sent at once cannot all be checked.
    Reserved,
    /// Admitted from this network before and found not valid since (a revoked key): checked,
    /// and its failure counts nothing.
    Revoked,
    /// No limit is set.
    Unlimited,
}

/// Whose a token admitted from a network is, which decides what may take its place in the
/// network's list. A tenant with a manager key can make as many keys as it likes: were the list
/// only least-recently-used, enough of them used once would push out the admin's token and
/// every other tenant's, and a spent allowance would then hold those back too (a lock-out of
/// everyone behind the same address). So the operator's tokens (the admin token, the metrics
/// token) are never pushed out, and one organization's keys hold at most `ADMITTED_PER_ORG` of
/// the `ADMITTED_PER_NETWORK` places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Operator,
    /// An organization, by a hash of its id (a collision only shares a quota).
    Org(u64),
}

impl Owner {
    pub fn org(id: &str) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        id.hash(&mut hasher);
        Owner::Org(hasher.finish())
    }
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
    /// SHA-256 digests of tokens admitted from this network and whose they are, the most
    /// recently used last.
    admitted: Vec<([u8; 32], Owner)>,
    /// Digests of tokens admitted from this network and revoked since, the most recently
    /// sent last.
    revoked: Vec<[u8; 32]>,
}

impl Allowance {
    fn refill(&mut self, now: Instant, per_minute: u32) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.left = (self.left + elapsed * f64::from(per_minute) / 60.0).min(f64::from(per_minute));
        self.at = now;
        self.seen = now;
    }

    /// Makes room in a full list for a token of `owner`: its own least recently used if it
    /// holds its share already, else the least recently used that is not the operator's.
    fn make_room_for(&mut self, owner: Owner) {
        let holds = self.admitted.iter().filter(|(_, o)| *o == owner).count();
        let victim = if owner != Owner::Operator && holds >= ADMITTED_PER_ORG {
            self.admitted.iter().position(|(_, o)| *o == owner)
        } else {
            self.admitted
                .iter()
                .position(|(_, o)| *o != Owner::Operator)
        };
        if let Some(i) = victim {
            self.admitted.remove(i);
        }
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

    /// Whether a token (its SHA-256) from `network` may be checked now; if it may, its
    /// outcome goes to [`TokenFailures::admitted`] or [`TokenFailures::failed`] with the
    /// [`Pass`], or to [`TokenFailures::unsettled`] if it was never checked after all.
    pub fn check(&self, network: Network, digest: &[u8; 32]) -> Check {
        self.check_at(network, digest, Instant::now())
    }

    /// The token, `owner`'s, was valid from `network`: it passes there from now on, whatever
    /// the network's allowance.
    pub fn admitted(&self, network: Network, digest: &[u8; 32], pass: Pass, owner: Owner) {
        self.admitted_at(network, digest, pass, owner, Instant::now());
    }

    /// The token from `network` was not valid; `true` when the network's allowance is spent
    /// after it (the moment to say so in the log).
    pub fn failed(&self, network: Network, digest: &[u8; 32], pass: Pass) -> bool {
        self.failed_at(network, digest, pass, Instant::now())
    }

    /// A token let through was never checked (its request was given up): what was held for it
    /// is given back.
    pub fn unsettled(&self, network: Network, pass: Pass) {
        if pass == Pass::Reserved {
            let mut networks = self.networks.lock().expect("token failures lock");
            if let Some(allowance) = networks.get_mut(&network) {
                allowance.left = (allowance.left + 1.0).min(f64::from(self.per_minute));
            }
        }
    }

    /// The limit per minute, for the message that says it was reached.
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    fn check_at(&self, network: Network, digest: &[u8; 32], now: Instant) -> Check {
        if self.per_minute == 0 {
            return Check::Go(Pass::Unlimited);
        }
        let mut networks = self.networks.lock().expect("token failures lock");
        let allowance = self.allowance(&mut networks, network, now);
        allowance.refill(now, self.per_minute);
        if let Some(i) = allowance.admitted.iter().position(|(d, _)| d == digest) {
            if i + 1 != allowance.admitted.len() {
                let used = allowance.admitted.remove(i);
                allowance.admitted.push(used);
            }
            return Check::Go(Pass::Known);
        }
        if let Some(i) = allowance.revoked.iter().position(|d| d == digest) {
            let sent = allowance.revoked.remove(i);
            allowance.revoked.push(sent);
            return Check::Go(Pass::Revoked);
        }
        if allowance.left >= 1.0 {
            allowance.left -= 1.0;
            return Check::Go(Pass::Reserved);
        }
        self.held_back.add(1);
        let seconds = (1.0 - allowance.left) * 60.0 / f64::from(self.per_minute);
        Check::Wait(Duration::from_secs_f64(seconds.ceil().max(1.0)))
    }

    fn admitted_at(
        &self,
        network: Network,
        digest: &[u8; 32],
        pass: Pass,
        owner: Owner,
        now: Instant,
    ) {
        if !matches!(pass, Pass::Reserved | Pass::Revoked) {
            return;
        }
        let mut networks = self.networks.lock().expect("token failures lock");
        let per_minute = self.per_minute;
        let allowance = self.allowance(&mut networks, network, now);
        allowance.refill(now, per_minute);
        if pass == Pass::Reserved {
            allowance.left = (allowance.left + 1.0).min(f64::from(per_minute));
        }
        // Valid again (an admin token set back as it was): admitted as before.
        allowance.revoked.retain(|d| d != digest);
        if !allowance.admitted.iter().any(|(d, _)| d == digest) {
            if allowance.admitted.len() >= ADMITTED_PER_NETWORK {
                allowance.make_room_for(owner);
            }
            allowance.admitted.push((*digest, owner));
        }
    }

    fn failed_at(&self, network: Network, digest: &[u8; 32], pass: Pass, now: Instant) -> bool {
        self.invalid.add(1);
        if pass == Pass::Unlimited {
            return false;
        }
        let mut networks = self.networks.lock().expect("token failures lock");
        let per_minute = self.per_minute;
        let allowance = self.allowance(&mut networks, network, now);
        allowance.refill(now, per_minute);
        match pass {
            // Admitted before and revoked since: no guess, so it counts nothing, now or when
            // sent again.
            Pass::Known => {
                allowance.admitted.retain(|(d, _)| d != digest);
                if allowance.revoked.len() >= REVOKED_PER_NETWORK {
                    allowance.revoked.remove(0);
                }
                allowance.revoked.push(*digest);
                false
            }
            Pass::Revoked => false,
            Pass::Reserved | Pass::Unlimited => allowance.left < 1.0,
        }
    }

    /// The network's allowance, a full one if it has none yet (first forgetting the quietest
    /// tenth of the networks when there are already [`MAX_NETWORKS`]).
    fn allowance<'a>(
        &self,
        networks: &'a mut HashMap<Network, Allowance>,
        network: Network,
        now: Instant,
    ) -> &'a mut Allowance {
        if networks.len() >= MAX_NETWORKS && !networks.contains_key(&network) {
            let mut by_quiet: Vec<(Instant, Network)> =
                networks.iter().map(|(n, a)| (a.seen, *n)).collect();
            let tenth = MAX_NETWORKS / 10;
            by_quiet.select_nth_unstable_by_key(tenth, |(seen, _)| *seen);
            for (_, quiet) in &by_quiet[..tenth] {
                networks.remove(quiet);
            }
        }
        networks.entry(network).or_insert_with(|| Allowance {
            left: f64::from(self.per_minute),
            at: now,
            seen: now,
            admitted: Vec::new(),
            revoked: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(address: &str) -> Network {
        Network::of(address.parse().unwrap())
    }

    /// A token that turns out not valid, as the authenticator reports it.
    fn guess(failures: &TokenFailures, client: Network, digest: &[u8; 32], now: Instant) -> bool {
        let Check::Go(pass) = failures.check_at(client, digest, now) else {
            panic!("held back");
        };
        failures.failed_at(client, digest, pass, now)
    }

    /// A token that turns out valid, of an organization of its own.
    fn valid(failures: &TokenFailures, client: Network, digest: &[u8; 32], now: Instant) -> Pass {
        valid_of(
            failures,
            client,
            digest,
            Owner::org(&hex::encode(digest)),
            now,
        )
    }

    /// A token of `owner` that turns out valid.
    fn valid_of(
        failures: &TokenFailures,
        client: Network,
        digest: &[u8; 32],
        owner: Owner,
        now: Instant,
    ) -> Pass {
        let Check::Go(pass) = failures.check_at(client, digest, now) else {
            panic!("held back");
        };
        failures.admitted_at(client, digest, pass, owner, now);
        pass
    }

    #[test]
    fn a_network_that_spends_its_allowance_waits_for_it_to_refill() {
        let failures = TokenFailures::new(3);
        let (client, wrong) = (net("203.0.113.9"), [7u8; 32]);
        let start = Instant::now();
        assert!(!guess(&failures, client, &wrong, start));
        assert!(!guess(&failures, client, &wrong, start));
        // The third failure spends it.
        assert!(guess(&failures, client, &wrong, start));
        assert_eq!(
            failures.check_at(client, &wrong, start),
            Check::Wait(Duration::from_secs(20))
        );
        // One failure back every 20 s.
        let later = start + Duration::from_secs(10);
        assert_eq!(
            failures.check_at(client, &wrong, later),
            Check::Wait(Duration::from_secs(10))
        );
        let later = start + Duration::from_secs(20);
        assert!(guess(&failures, client, &wrong, later));
        // Another network is not held back, nor is the same one after a quiet minute.
        assert!(!guess(&failures, net("203.0.113.10"), &wrong, later));
        let quiet = later + Duration::from_secs(60);
        assert!(!guess(&failures, client, &wrong, quiet));
        assert!(!guess(&failures, client, &wrong, quiet));
        assert_eq!(failures.held_back.get(), 2);
        assert_eq!(failures.invalid.get(), 7);
    }

    #[test]
    fn tokens_sent_at_once_are_checked_only_as_far_as_the_allowance_goes() {
        let failures = TokenFailures::new(3);
        let client = net("203.0.113.9");
        let now = Instant::now();
        // Four new tokens in flight at once (their checks waiting on the database): the
        // fourth waits, though no failure has been counted yet.
        let passes: Vec<Check> = (0..4u8)
            .map(|i| failures.check_at(client, &[i; 32], now))
            .collect();
        assert_eq!(passes[..3], [Check::Go(Pass::Reserved); 3]);
        assert!(matches!(passes[3], Check::Wait(_)));
        // One turns out valid and one is given up: both give back what was held for them.
        failures.admitted_at(client, &[0; 32], Pass::Reserved, Owner::Operator, now);
        failures.unsettled(client, Pass::Reserved);
        assert!(!failures.failed_at(client, &[2; 32], Pass::Reserved, now));
        assert_eq!(
            failures.check_at(client, &[4; 32], now),
            Check::Go(Pass::Reserved)
        );
        assert_eq!(
            failures.check_at(client, &[5; 32], now),
            Check::Go(Pass::Reserved)
        );
        assert!(matches!(
            failures.check_at(client, &[6; 32], now),
            Check::Wait(_)
        ));
    }

    #[test]
    fn tokens_admitted_before_still_pass_a_spent_allowance_until_they_fail() {
        let failures = TokenFailures::new(2);
        let client = net("198.51.100.1");
        let (producer, wrong) = ([1u8; 32], [2u8; 32]);
        let now = Instant::now();
        assert_eq!(valid(&failures, client, &producer, now), Pass::Reserved);
        assert_eq!(valid(&failures, client, &producer, now), Pass::Known);
        guess(&failures, client, &wrong, now);
        guess(&failures, client, &wrong, now);
        assert!(matches!(
            failures.check_at(client, &wrong, now),
            Check::Wait(_)
        ));
        assert_eq!(
            failures.check_at(client, &producer, now),
            Check::Go(Pass::Known)
        );
        // Revoked meanwhile: checked each time it is sent again, counting nothing.
        assert!(!failures.failed_at(client, &producer, Pass::Known, now));
        for _ in 0..100 {
            assert_eq!(
                failures.check_at(client, &producer, now),
                Check::Go(Pass::Revoked)
            );
            assert!(!failures.failed_at(client, &producer, Pass::Revoked, now));
        }
        assert_eq!(
            failures.invalid.get(),
            103,
            "counted as not valid all the same"
        );
        // Valid again (an admin token set back): it passes as before.
        failures.admitted_at(client, &producer, Pass::Revoked, Owner::Operator, now);
        assert_eq!(
            failures.check_at(client, &producer, now),
            Check::Go(Pass::Known)
        );
    }

    /// Clients still sending a revoked key (pods not yet rolled) do not hold back the new one
    /// from their network.
    #[test]
    fn a_revoked_key_sent_again_and_again_holds_back_no_new_one() {
        let failures = TokenFailures::new(2);
        let client = net("198.51.100.7");
        let (old, new) = ([1u8; 32], [2u8; 32]);
        let now = Instant::now();
        valid(&failures, client, &old, now);
        for _ in 0..50 {
            let Check::Go(pass) = failures.check_at(client, &old, now) else {
                panic!("held back");
            };
            assert!(!failures.failed_at(client, &old, pass, now));
        }
        assert_eq!(valid(&failures, client, &new, now), Pass::Reserved);
    }

    #[test]
    fn the_tokens_used_least_recently_are_forgotten_first() {
        let failures = TokenFailures::new(1);
        let client = net("198.51.100.1");
        let now = Instant::now();
        let token = |i: usize| {
            [0, 0, (i >> 8) as u8, i as u8]
                .repeat(8)
                .try_into()
                .unwrap()
        };
        for i in 0..ADMITTED_PER_NETWORK {
            valid(&failures, client, &token(i), now);
        }
        // The first, used again, is now the most recent; one more forgets the second.
        valid(&failures, client, &token(0), now);
        valid(&failures, client, &token(ADMITTED_PER_NETWORK), now);
        guess(&failures, client, &[0xff; 32], now);
        assert_eq!(
            failures.check_at(client, &token(0), now),
            Check::Go(Pass::Known)
        );
        assert!(matches!(
            failures.check_at(client, &token(1), now),
            Check::Wait(_)
        ));
        assert_eq!(
            failures.check_at(client, &token(2), now),
            Check::Go(Pass::Known)
        );
    }

    #[test]
    fn a_tenant_making_many_keys_cannot_push_out_the_admin_or_other_tenants() {
        let failures = TokenFailures::new(1);
        let client = net("198.51.100.1");
        let now = Instant::now();
        // A token of its own for each number (four bytes of it, repeated).
        let token = |tag: u8, i: usize| -> [u8; 32] {
            [tag, 0, (i >> 8) as u8, i as u8]
                .repeat(8)
                .try_into()
                .unwrap()
        };
        let admin = [0xaa; 32];
        valid_of(&failures, client, &admin, Owner::Operator, now);
        // Fourteen neighbours behind the same address, sixteen keys each in use.
        let neighbours: Vec<([u8; 32], Owner)> = (0..14 * ADMITTED_PER_ORG)
            .map(|i| {
                (
                    token(1, i),
                    Owner::org(&format!("org_{}", i / ADMITTED_PER_ORG)),
                )
            })
            .collect();
        for (key, owner) in &neighbours {
            valid_of(&failures, client, key, *owner, now);
        }
        // The tenant uses three hundred keys of its own, then spends the allowance.
        let attacker = Owner::org("org_attacker");
        for i in 0..300 {
            valid_of(&failures, client, &token(2, i), attacker, now);
        }
        guess(&failures, client, &[0xff; 32], now);
        assert_eq!(
            failures.check_at(client, &admin, now),
            Check::Go(Pass::Known),
            "the admin is held back"
        );
        for (key, _) in &neighbours {
            assert_eq!(
                failures.check_at(client, key, now),
                Check::Go(Pass::Known),
                "a neighbour's key is held back"
            );
        }
        // Only the tenant's most recent keys are remembered.
        assert!(matches!(
            failures.check_at(client, &token(2, 0), now),
            Check::Wait(_)
        ));
        assert_eq!(
            failures.check_at(client, &token(2, 299), now),
            Check::Go(Pass::Known)
        );
        assert_eq!(
            failures.networks.lock().unwrap()[&client].admitted.len(),
            ADMITTED_PER_NETWORK
        );
        // Keys of three hundred organizations (a proxy in front of many) push out one
        // another's, never the admin's.
        let later = now + Duration::from_secs(60);
        for i in 0..300 {
            valid(&failures, client, &token(3, i), later);
        }
        guess(&failures, client, &[0xfe; 32], later);
        assert_eq!(
            failures.check_at(client, &admin, later),
            Check::Go(Pass::Known)
        );
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
        guess(&failures, first, &[0; 32], start);
        for i in 1..MAX_NETWORKS as u32 {
            let at = start + Duration::from_millis(u64::from(i));
            valid(
                &failures,
                Network(IpAddr::from(i.to_be_bytes())),
                &[0; 32],
                at,
            );
        }
        // The first is still held back (asked as it spent its allowance: asking counts as
        // being seen); one more network forgets the quietest tenth, the first among them.
        assert!(matches!(
            failures.check_at(first, &[1; 32], start),
            Check::Wait(_)
        ));
        let at = start + Duration::from_secs(30);
        valid(&failures, net("192.0.2.1"), &[0; 32], at);
        assert_eq!(
            failures.networks.lock().unwrap().len(),
            MAX_NETWORKS - MAX_NETWORKS / 10 + 1
        );
        assert_eq!(
            failures.check_at(first, &[1; 32], at),
            Check::Go(Pass::Reserved)
        );
    }

    #[test]
    fn no_limit_counts_but_never_holds_back() {
        let failures = TokenFailures::new(0);
        let client = net("192.0.2.1");
        for _ in 0..100 {
            assert!(!guess(&failures, client, &[3; 32], Instant::now()));
        }
        assert_eq!(failures.check(client, &[3; 32]), Check::Go(Pass::Unlimited));
        assert_eq!(failures.invalid.get(), 100);
        assert!(failures.networks.lock().unwrap().is_empty());
    }
}
