//! The build host's side of the boundary a template cannot cross.
//!
//! What host tools started for a build inherit: the environment they need to run and reach a
//! package mirror, and nothing else — no cloud credentials (`AZURE_CLIENT_SECRET`,
//! `AZURE_STORAGE_KEY`, a SAS token), whatever the builder's own environment holds.
//!
//! ```
//! let mut cmd = std::process::Command::new("true");
//! cmd.env_clear().envs(aib_core::boundary::tool_env());
//! assert!(aib_core::boundary::tool_env().all(|(k, _)| !k.starts_with("AZURE_")));
//! ```
//!
//! Which addresses a template's `scriptUri`/`sourceUri` may make the builder fetch from:
//! public ones, and internal ones ([`is_internal`]: loopback, link-local with the clouds'
//! metadata services, private and shared ranges) only inside a network the operator allows.
//!
//! ```
//! use aib_core::boundary::{IpNet, may_fetch_from};
//! let lab: IpNet = "10.1.0.0/16".parse().unwrap();
//! assert!(may_fetch_from("93.184.215.14".parse().unwrap(), &[]));
//! assert!(!may_fetch_from("169.254.169.254".parse().unwrap(), &[]));
//! assert!(!may_fetch_from("10.1.2.3".parse().unwrap(), &[]));
//! assert!(may_fetch_from("10.1.2.3".parse().unwrap(), &[lab]));
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The variables host tools keep (qemu-img, qemu, mmdebstrap and apt, sfdisk): the search
/// path, locale and time zone, temp directory, home, and the proxies a mirror may need.
pub const TOOL_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "TERM",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];

/// The builder's values of [`TOOL_ENV`], for `Command::env_clear().envs(..)`.
pub fn tool_env() -> impl Iterator<Item = (String, String)> {
    TOOL_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
}

/// An IP network in CIDR notation: `10.0.0.0/8`, `fd00::/8`, or one address (`127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Every IPv4 address: `0.0.0.0/0`.
    pub const ANY_V4: IpNet = IpNet { addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED), prefix: 0 };
    /// Every IPv6 address: `::/0`.
    pub const ANY_V6: IpNet = IpNet { addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED), prefix: 0 };

    /// The network of `addr` with a `prefix`-bit mask; `None` when the prefix is too long.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an IP network: give an address or ADDRESS/PREFIX (10.0.0.0/8, fd00::/8)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        IpNet::new(addr, prefix).ok_or_else(bad)
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = (usize::from(bits / 8), bits % 8);
    a[..whole] == b[..whole] && (rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0)
}

/// An IPv4-mapped (`::ffff:a.b.c.d`) or IPv4-compatible IPv6 address as its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if v6.segments()[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() => {
                let o = v6.octets();
                IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            }
            None => ip,
        },
        v4 => v4,
    }
}

/// Whether `ip` is an address of the builder's own side rather than of the internet:
/// unspecified, loopback, link-local (with `169.254.169.254`, the clouds' metadata services),
/// private (RFC 1918, IPv6 unique local), shared (100.64.0.0/10), benchmarking, multicast or
/// broadcast. A template's sources may not point there unless the operator allows it.
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_unspecified()
                || o[0] == 0
                || a.is_loopback()
                || a.is_link_local()
                || a.is_private()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || a.is_multicast()
                || a.is_broadcast()
                || o[0] >= 240
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            a.is_unspecified()
                || a.is_loopback()
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xfe00) == 0xfc00
                || a.is_multicast()
                || a == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0xa9fe, 0xa9fe)
        }
    }
}

/// Whether the builder may fetch a template's source from `ip`: any public address, and an
/// internal one ([`is_internal`]) only inside one of the networks the operator `allowed`.
pub fn may_fetch_from(ip: IpAddr, allowed: &[IpNet]) -> bool {
    !is_internal(ip) || allowed.iter().any(|n| n.contains(ip))
}

/// Whether `path` lies strictly inside `root`, judged without resolving anything: absolute,
/// with no `.` or `..` components. For paths read back from a ledger, before deleting them.
///
/// ```
/// use aib_core::boundary::lies_under;
/// use std::path::Path;
/// assert!(lies_under(Path::new("/var/lib/aib/runs/r1"), Path::new("/var/lib/aib")));
/// assert!(!lies_under(Path::new("/var/lib/aib/../../home/u"), Path::new("/var/lib/aib")));
/// ```
pub fn lies_under(path: &std::path::Path, root: &std::path::Path) -> bool {
    use std::path::Component;
    path.is_absolute()
        && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && path.starts_with(root)
        && path != root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_lie_under_a_root_only_lexically_inside_it() {
        let root = std::path::Path::new("/var/lib/aib");
        assert!(lies_under(std::path::Path::new("/var/lib/aib/gallery/.tmp-1"), root));
        for p in ["/var/lib/aib", "/var/lib/aib/../../home/u", "/var/lib/aibx/y", "relative/x", "/home/u/.ssh"] {
            assert!(!lies_under(std::path::Path::new(p), root), "{p}");
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_the_builders_side() {
        let internal = "127.0.0.1 127.8.9.1 0.0.0.0 10.0.0.1 172.16.0.1 172.31.255.255 192.168.1.1 169.254.169.254 100.64.0.1 \
                        100.127.255.1 224.0.0.1 255.255.255.255 ::1 :: fe80::1 fd00::1 fc12::1 ::ffff:127.0.0.1 \
                        ::ffff:169.254.169.254 ::127.0.0.2 ff02::1 198.18.0.1";
        for a in internal.split_whitespace() {
            assert!(is_internal(ip(a)), "{a}");
        }
        for a in ["93.184.215.14", "172.32.0.1", "100.128.0.1", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "11.0.0.1"] {
            assert!(!is_internal(ip(a)), "{a}");
        }
    }

    #[test]
    fn networks_parse_and_contain() {
        let n: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains(ip("10.1.255.3")) && !n.contains(ip("10.2.0.1")) && !n.contains(ip("::1")));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")) && one.contains(ip("::ffff:127.0.0.1")));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let odd: IpNet = "172.16.0.0/12".parse().unwrap();
        assert!(odd.contains(ip("172.31.1.1")) && !odd.contains(ip("172.32.0.0")));
        assert_eq!(one.to_string(), "127.0.0.1/32");
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x", ""] {
            assert!(bad.parse::<IpNet>().unwrap_err().contains("not an IP network"), "{bad}");
        }
        assert!(may_fetch_from(ip("127.0.0.1"), &[one]) && !may_fetch_from(ip("127.0.0.2"), &[one]));
    }
}
