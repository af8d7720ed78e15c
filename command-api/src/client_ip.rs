//! Who a request comes from when the command API sits behind proxies (`TRUSTED_PROXIES`): the
//! sign-up rate limit is per client IP, and behind a proxy every peer is the proxy.
//!
//! Each proxy appends the address it got the request from to `X-Forwarded-For`. Read from the
//! right, the entries are written by the proxies the request passed through, nearest first,
//! until the first one that is not a proxy we trust: that is the client. Everything left of it
//! came from the client itself and may be anything, so a client that fills the header in only
//! pushes its inventions leftwards, where nobody reads them. A peer we do not trust is the
//! client, whatever the header says.
//!
//! A malformed entry met before the client's means the header is not what our proxies write;
//! the answer is then the peer (a limit shared with everyone behind that proxy, never an
//! error). When every entry is a trusted proxy, the client is the leftmost: the farthest hop
//! known.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use axum::http::{HeaderMap, HeaderName};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// One trusted address, or a CIDR range of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix_len: u8,
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                (u32::from(network) ^ u32::from(ip)) & v4_mask(self.prefix_len) == 0
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                (u128::from(network) ^ u128::from(ip)) & v6_mask(self.prefix_len) == 0
            }
            _ => false,
        }
    }
}

/// The bits a prefix of `len` covers (`checked_shl`: a shift by the whole width is no bits).
fn v4_mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn v6_mask(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl FromStr for IpRange {
    type Err = String;

    /// `192.0.2.7`, `10.0.0.0/8`, `::1`, `2001:db8::/32`. Bits past the prefix are ignored
    /// (`10.1.2.3/8` is `10.0.0.0/8`); an IPv4-mapped IPv6 address is its IPv4 address, and takes
    /// an IPv4 prefix.
    fn from_str(text: &str) -> Result<IpRange, String> {
        let refused = || format!("{text:?} is not an IP address or a CIDR range like 10.0.0.0/8");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = address
            .parse::<IpAddr>()
            .map_err(|_| refused())?
            .to_canonical();
        let most = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => most,
            // Digits only: `u8::from_str` would also take a sign.
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                digits
                    .parse::<u8>()
                    .ok()
                    .filter(|len| *len <= most)
                    .ok_or_else(refused)?
            }
            Some(_) => return Err(refused()),
        };
        let network = match network {
            IpAddr::V4(address) => Ipv4Addr::from(u32::from(address) & v4_mask(prefix_len)).into(),
            IpAddr::V6(address) => Ipv6Addr::from(u128::from(address) & v6_mask(prefix_len)).into(),
        };
        Ok(IpRange {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// The proxies whose `X-Forwarded-For` entries are believed; none by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpRange>);

impl FromStr for TrustedProxies {
    type Err = String;

    /// Comma-separated [`IpRange`]s; blank entries are skipped, so `""` trusts no one.
    fn from_str(text: &str) -> Result<TrustedProxies, String> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(IpRange::from_str)
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, range) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|range| range.contains(ip))
    }

    /// The client of a request from `peer` with `headers` (see the module documentation).
    /// Costs nothing more than the peer's check when no proxy is trusted.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let mut farthest_proxy = None;
        // Several header lines are one list, in order (RFC 9110 §5.3).
        for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
            let Ok(line) = line.to_str() else {
                return peer;
            };
            for entry in line.rsplit(',') {
                let Some(ip) = parse_entry(entry) else {
                    return peer;
                };
                if !self.trusts(ip) {
                    return ip;
                }
                farthest_proxy = Some(ip);
            }
        }
        farthest_proxy.unwrap_or(peer)
    }
}

/// An `X-Forwarded-For` entry: an address, with or without a port (`192.0.2.7:1234`,
/// `[2001:db8::1]:1234`), as proxies write them.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim_matches([' ', '\t']);
    let ip = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn proxies(text: &str) -> TrustedProxies {
        text.parse().expect("valid proxies")
    }

    fn forwarded(lines: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_static(line));
        }
        headers
    }

    #[test]
    fn ranges_parse_and_contain_what_their_prefix_covers() {
        let range: IpRange = "10.1.2.3/8".parse().expect("a range");
        assert_eq!(range.to_string(), "10.0.0.0/8");
        assert!(range.contains(ip("10.255.0.1")));
        assert!(!range.contains(ip("11.0.0.1")));
        // An IPv4-mapped IPv6 peer is its IPv4 address.
        assert!(range.contains(ip("::ffff:10.0.0.1")));
        assert!(!range.contains(ip("::1")));

        let single: IpRange = "192.0.2.7".parse().expect("an address");
        assert!(single.contains(ip("192.0.2.7")));
        assert!(!single.contains(ip("192.0.2.8")));

        let everything: IpRange = "0.0.0.0/0".parse().expect("a range");
        assert!(everything.contains(ip("203.0.113.9")));
        assert!(!everything.contains(ip("2001:db8::1")));

        let v6: IpRange = "2001:db8::/32".parse().expect("a range");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        let all_v6: IpRange = "::/0".parse().expect("a range");
        assert!(all_v6.contains(ip("::1")));
        let mapped: IpRange = "::ffff:192.0.2.0/24".parse().expect("a range");
        assert_eq!(mapped.to_string(), "192.0.2.0/24");

        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "::/129",
            "10.0.0",
            "localhost",
            "10.0.0.0 /8",
            "192.0.2.7:80",
        ] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_list_parses_with_blanks_skipped_and_names_a_bad_entry() {
        assert!(proxies("").is_empty());
        assert!(proxies(" , ").is_empty());
        let list = proxies(" 10.0.0.0/8 ,::1,");
        assert_eq!(list.to_string(), "10.0.0.0/8,::1/128");
        assert!(list.trusts(ip("10.9.9.9")) && list.trusts(ip("::1")));
        assert!(!list.trusts(ip("127.0.0.1")));
        let error = "10.0.0.0/8,nope"
            .parse::<TrustedProxies>()
            .expect_err("bad");
        assert!(error.contains("\"nope\""), "{error}");
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_the_header_says() {
        let headers = forwarded(&["198.51.100.1"]);
        assert_eq!(
            TrustedProxies::default().client_ip(ip("203.0.113.5"), &headers),
            ip("203.0.113.5")
        );
        assert_eq!(
            proxies("10.0.0.0/8").client_ip(ip("203.0.113.5"), &headers),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_client_is_the_rightmost_untrusted_entry() {
        let trusted = proxies("10.0.0.0/8");
        let proxy = ip("10.0.0.2");
        let client = |lines: &[&'static str]| trusted.client_ip(proxy, &forwarded(lines));
        assert_eq!(client(&["198.51.100.1"]), ip("198.51.100.1"));
        // Proxies in a chain are skipped; what the client wrote, left of itself, is not read.
        assert_eq!(
            client(&["6.6.6.6, 198.51.100.1, 10.0.0.7"]),
            ip("198.51.100.1")
        );
        assert_eq!(client(&["garbage, 198.51.100.1"]), ip("198.51.100.1"));
        // Several header lines are one list.
        assert_eq!(
            client(&["6.6.6.6", "198.51.100.1,10.0.0.7"]),
            ip("198.51.100.1")
        );
        assert_eq!(client(&["198.51.100.1", "10.0.0.7"]), ip("198.51.100.1"));
        // Ports, spaces, tabs and mapped addresses, as proxies may write them.
        assert_eq!(client(&["198.51.100.1:4711"]), ip("198.51.100.1"));
        assert_eq!(client(&["[2001:db8::1]:4711"]), ip("2001:db8::1"));
        assert_eq!(client(&[" \t2001:db8::1 "]), ip("2001:db8::1"));
        assert_eq!(client(&["::ffff:198.51.100.1"]), ip("198.51.100.1"));
        // Every entry a proxy: the farthest one.
        assert_eq!(client(&["10.0.0.9, 10.0.0.7"]), ip("10.0.0.9"));
        // An IPv4-mapped peer is trusted as its IPv4 address.
        assert_eq!(
            trusted.client_ip(ip("::ffff:10.0.0.2"), &forwarded(&["198.51.100.1"])),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn a_missing_or_malformed_header_falls_back_to_the_peer() {
        let trusted = proxies("10.0.0.0/8");
        let proxy = ip("10.0.0.2");
        let client = |lines: &[&'static str]| trusted.client_ip(proxy, &forwarded(lines));
        assert_eq!(client(&[]), proxy);
        for malformed in [
            &["198.51.100.1, garbage"][..],
            &["198.51.100.1,"],
            &[""],
            &["198.51.100.1", "unknown"],
            &["198.51.100.1 10.0.0.7"],
            &["198.51.100.1:99999"],
        ] {
            assert_eq!(client(malformed), proxy, "{malformed:?}");
        }
        let mut not_text = HeaderMap::new();
        not_text.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"198.51.100.\xff").expect("a header value"),
        );
        assert_eq!(trusted.client_ip(proxy, &not_text), proxy);
    }
}
