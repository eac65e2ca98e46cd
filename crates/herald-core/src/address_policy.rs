//! Which addresses deliveries may reach. Herald carries identity data to URLs that its users'
//! customers type in, so by default it refuses every address that is not public (loopback,
//! private, link-local and the cloud metadata address, CGNAT, multicast, reserved…), checked on
//! the addresses a host name resolves to, unless an operator allows a range explicitly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::Invalid;

/// The allowed non-public ranges. Everything public is always allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    /// Parses `HERALD_ALLOW_PRIVATE_NETWORKS`: CIDRs (`10.0.0.0/8`) or single addresses.
    pub fn parse(ranges: &[String]) -> Result<Self, Invalid> {
        let mut allowed = Vec::new();
        for raw in ranges.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
            let net = raw
                .parse::<IpNet>()
                .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    Invalid::new(
                        "allow_private_networks",
                        format!("'{raw}' is not a CIDR such as 10.0.0.0/8 or 127.0.0.1/32"),
                    )
                })?;
            allowed.push(as_checked(net));
        }
        Ok(Self { allowed })
    }

    /// The allowed ranges that take the guard down rather than open a door in it: every
    /// address (`/0`), or a cloud metadata service's, where an instance's credentials are.
    pub fn too_broad(&self) -> Vec<String> {
        let metadata: [IpAddr; 3] = [
            IpAddr::from([169, 254, 169, 254]),
            IpAddr::from(AZURE_WIRESERVER),
            "fd00:ec2::254".parse().expect("an IPv6 address"),
        ];
        self.allowed
            .iter()
            .filter(|net| net.prefix_len() == 0 || metadata.iter().any(|ip| net.contains(ip)))
            .map(ToString::to_string)
            .collect()
    }

    /// `Err` names the kind of address and how to allow it.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        match self.refused_kind(ip) {
            None => Ok(()),
            Some(kind) => Err(format!(
                "{} is {} address; Herald delivers only to public addresses unless the server's operator allows that network (HERALD_ALLOW_PRIVATE_NETWORKS)",
                canonical(ip),
                a_kind(kind)
            )),
        }
    }

    /// The kind of a refused address (`private`, `loopback`, …), or `None` if it is permitted.
    pub fn refused_kind(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = canonical(ip);
        let kind = non_public_kind(ip)?;
        (!self.allowed.iter().any(|net| net.contains(&ip))).then_some(kind)
    }

    /// Checks a URL host that is an IP literal (or `localhost`) before anything is sent; names
    /// are checked when they resolve.
    pub fn check_host(&self, host: &str) -> Result<(), String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check(ip);
        }
        // `localhost.` is the same name, fully qualified.
        let lower = bare.to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        if lower == "localhost" || lower.ends_with(".localhost") {
            return self.check(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        Ok(())
    }
}

/// A kind of address with its article, as a message says it: `a loopback`, `an IPv4-compatible`.
pub fn a_kind(kind: &str) -> String {
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u', 'I']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {kind}")
}

/// Azure's WireServer: a public address, but the platform's own, where a virtual machine's
/// agent fetches its configuration (and, with it, secrets).
const AZURE_WIRESERVER: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);

/// An allowed range of IPv4-mapped IPv6 addresses (`::ffff:10.0.0.0/104`) as the IPv4 range
/// it maps: addresses are judged as the IPv4 address they carry ([`canonical`]), so the range
/// as written would match none of them.
fn as_checked(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96)
                .map(|n| n.trunc())
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// An IPv4-mapped IPv6 address is judged as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn non_public_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == AZURE_WIRESERVER {
        Some("cloud metadata")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("carrier-grade NAT")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("reserved")
    } else if ip.is_documentation()
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        // The 6to4 relays' anycast range, deprecated: whatever answers there is not a receiver.
        || (o[0] == 192 && o[1] == 88 && o[2] == 99)
    {
        Some("special-purpose")
    } else {
        None
    }
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if (seg[0] & 0xfe00) == 0xfc00 {
        if seg[0] == 0xfd00 && seg[1] == 0x0ec2 {
            Some("cloud metadata")
        } else {
            Some("private")
        }
    } else if (seg[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (seg[0] == 0x2001 && seg[1] == 0x0db8)
        // Documentation (3fff::/20), SRv6 segment ids (5f00::/16), benchmarking
        // (2001:2::/48) and ORCHID (2001:10::/28): none of them reaches a receiver.
        || (seg[0] == 0x3fff && seg[1] < 0x1000)
        || seg[0] == 0x5f00
        || (seg[0] == 0x2001 && seg[1] == 0x0002 && seg[2] == 0)
        || (seg[0] == 0x2001 && (seg[1] & 0xfff0) == 0x0010)
    {
        Some("special-purpose")
    } else if seg[0] == 0x0064 && seg[1] == 0xff9b {
        // NAT64 can reach any IPv4 address, private ones included.
        Some("NAT64")
    } else if seg[..6] == [0; 6] {
        // `::a.b.c.d`, deprecated; a host that still routes it reaches that IPv4 address.
        Some("IPv4-compatible")
    } else if seg[..4] == [0; 4] && seg[4] == 0xffff && seg[5] == 0 {
        Some("IPv4-translated")
    } else if seg[0] == 0x2002 {
        // 6to4 carries an IPv4 address in its second and third groups, and a relay reaches it.
        let [a, b] = seg[1].to_be_bytes();
        let [c, d] = seg[2].to_be_bytes();
        v4_kind(Ipv4Addr::new(a, b, c, d))
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        Some("Teredo")
    } else if (seg[0] & 0xffc0) == 0xfec0 {
        Some("site-local")
    } else if seg[0] == 0x0100 && seg[1..4] == [0; 3] {
        Some("discard-only")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_said_with_their_article() {
        assert_eq!(a_kind("loopback"), "a loopback");
        assert_eq!(a_kind("unspecified"), "an unspecified");
        assert_eq!(a_kind("IPv4-compatible"), "an IPv4-compatible");
    }

    fn blocked(ip: &str) -> bool {
        AddressPolicy::default().check(ip.parse().unwrap()).is_err()
    }

    #[test]
    fn ranges_that_take_the_guard_down_are_named() {
        let policy = |ranges: &[&str]| {
            AddressPolicy::parse(&ranges.iter().map(|r| r.to_string()).collect::<Vec<_>>()).unwrap()
        };
        assert!(
            policy(&["127.0.0.0/8", "10.0.0.0/8", "fd12:3456::/32"])
                .too_broad()
                .is_empty()
        );
        assert_eq!(
            policy(&["0.0.0.0/0", "::/0", "10.0.0.0/8"]).too_broad(),
            ["0.0.0.0/0", "::/0"]
        );
        assert_eq!(
            policy(&["169.254.0.0/16", "fd00::/8"]).too_broad(),
            ["169.254.0.0/16", "fd00::/8"]
        );
        assert_eq!(policy(&["168.63.129.16"]).too_broad(), ["168.63.129.16/32"]);
    }

    #[test]
    fn non_public_addresses_are_refused_by_default() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:0:a00:1",
            "2002:a9fe:a9fe::",
            "2002:7f00:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "100::1",
            "168.63.129.16",
            "::ffff:168.63.129.16",
            "192.88.99.1",
            "3fff::1",
            "3fff:fff::1",
            "5f00::1",
            "2001:2::1",
            "2001:10::1",
            "2001:1f:ffff::1",
        ] {
            assert!(blocked(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "100.128.0.1",
            "2002:808:808::1",
            "2001:4860:4860::8888",
            "168.63.129.17",
            "192.88.98.1",
            "3ffe::1",
            "3fff:1000::1",
            "2001:20::1",
            "2001:3::1",
        ] {
            assert!(!blocked(ip), "{ip} must be allowed");
        }
    }

    #[test]
    fn an_allowed_range_lets_its_addresses_through() {
        let policy = AddressPolicy::parse(&["127.0.0.0/8".into(), "10.0.0.5".into()]).unwrap();
        assert!(policy.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check("10.0.0.5".parse().unwrap()).is_ok());
        assert!(policy.check("10.0.0.6".parse().unwrap()).is_err());
        assert!(AddressPolicy::parse(&["not-a-cidr".into()]).is_err());
        // IPv4-mapped ranges allow the IPv4 addresses they map, in either form.
        let policy = AddressPolicy::parse(&["::ffff:10.0.0.0/104".into()]).unwrap();
        assert!(policy.check("10.9.8.7".parse().unwrap()).is_ok());
        assert!(policy.check("::ffff:10.9.8.7".parse().unwrap()).is_ok());
        assert!(policy.check("11.0.0.1".parse().unwrap()).is_ok(), "public");
        assert!(policy.check("192.168.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn literal_and_localhost_hosts_are_checked_before_resolving() {
        let policy = AddressPolicy::default();
        assert!(policy.check_host("[::1]").is_err());
        assert!(policy.check_host("LOCALHOST").is_err());
        assert!(policy.check_host("api.localhost").is_err());
        assert!(policy.check_host("localhost.").is_err());
        assert!(policy.check_host("api.localhost.").is_err());
        assert!(policy.check_host("example.com").is_ok());
        assert!(policy.check_host("example.com.").is_ok());
        let err = policy.check_host("169.254.169.254").unwrap_err();
        assert!(err.contains("cloud metadata"), "{err}");
    }
}
