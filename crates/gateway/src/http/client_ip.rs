//! The client address of a request: the peer address, unless the peer is a trusted proxy
//! (`trusted_proxies`), in which case the right-most `X-Forwarded-For` entry that is not
//! itself a trusted proxy.
//!
//! Only the entries appended by trusted proxies can be believed: anything to the left of
//! the first untrusted address was written by the client, who can write anything.

use std::net::{IpAddr, SocketAddr};

use actix_web::http::header::{HeaderMap, X_FORWARDED_FOR};
use actix_web::{web, HttpRequest};
use ipnet::IpNet;

/// A `trusted_proxies` entry that is neither an IP address nor a CIDR network.
#[derive(Debug, thiserror::Error)]
#[error("trusted_proxies: {0:?} is not an IP address or a CIDR network (such as 10.0.0.0/8)")]
pub struct InvalidProxy(pub String);

/// The proxies whose `X-Forwarded-For` is believed. Empty by default: then the header is
/// ignored and the client address is always the peer address.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses IP addresses (`10.1.2.3`, `::1`) and networks (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, InvalidProxy> {
        let networks = entries
            .iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                entry
                    .parse::<IpNet>()
                    .map(|net| net.trunc())
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| InvalidProxy(entry.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { networks })
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a connection from `peer` that carried `headers`.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        // Several header lines form one list, in order. A line is split as bytes: a client
        // can put any byte into the part of the line it writes, and that must not hide the
        // entries the proxies appended to its right.
        let lines: Vec<&[u8]> =
            headers.get_all(&X_FORWARDED_FOR).map(|value| value.as_bytes()).collect();
        let entries = lines
            .iter()
            .rev()
            .flat_map(|line| line.rsplit(|byte| *byte == b','))
            .map(|entry| std::str::from_utf8(entry).unwrap_or(""));
        self.rightmost_untrusted(peer, entries)
    }

    /// Walks the entries from the right: the first one that is not a trusted proxy is the
    /// client. When an entry does not parse, or every entry is trusted, the last address
    /// reached (the left-most believable one) is the client.
    fn rightmost_untrusted<'a>(
        &self,
        peer: IpAddr,
        entries_from_right: impl Iterator<Item = &'a str>,
    ) -> IpAddr {
        let mut client = peer;
        for entry in entries_from_right {
            let Some(ip) = parse_entry(entry) else { break };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, or an address with a port as some proxies
/// write it (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The client address of `req`, by the [`TrustedProxies`] registered with the server (none
/// when the server registered none). `None` only when the connection has no IP peer.
pub fn client_ip(req: &HttpRequest) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    Some(match req.app_data::<web::Data<TrustedProxies>>() {
        Some(trusted) if !trusted.is_empty() => trusted.client_address(peer, req.headers()),
        _ => peer.to_canonical(),
    })
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(X_FORWARDED_FOR.clone(), HeaderValue::from_str(line).unwrap());
        }
        map
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(entries).unwrap()
    }

    #[test]
    fn addresses_and_networks_parse_and_garbage_is_named() {
        let proxies = trusted(&["10.0.0.0/8", " 192.0.2.7 ", "fd00::/8", "::1", "172.16.5.9/12"]);
        for yes in ["10.200.1.1", "192.0.2.7", "fd12::1", "::1", "172.31.0.1", "::ffff:10.0.0.1"] {
            assert!(proxies.is_trusted(ip(yes)), "{yes}");
        }
        for no in ["11.0.0.1", "192.0.2.8", "fe80::1", "172.32.0.1"] {
            assert!(!proxies.is_trusted(ip(no)), "{no}");
        }
        for bad in ["10.0.0.0/33", "localhost", "10.0.0", "", "1.2.3.4/8/8"] {
            let err = TrustedProxies::parse(&[bad]).unwrap_err();
            assert!(err.to_string().starts_with("trusted_proxies: "), "{err}");
        }
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let proxies = TrustedProxies::default();
        let map = headers(&["198.51.100.1"]);
        assert_eq!(proxies.client_address(ip("203.0.113.5"), &map), ip("203.0.113.5"));
        assert_eq!(proxies.client_address(ip("::ffff:203.0.113.5"), &map), ip("203.0.113.5"));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let proxies = trusted(&["10.0.0.0/8"]);
        let map = headers(&["10.0.0.1"]);
        assert_eq!(proxies.client_address(ip("203.0.113.5"), &map), ip("203.0.113.5"));
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let proxies = trusted(&["10.0.0.0/8", "127.0.0.1"]);
        let peer = ip("127.0.0.1");
        let cases = [
            (vec!["198.51.100.1"], "198.51.100.1"),
            // The client wrote the left part; the proxies appended the rest.
            (vec!["6.6.6.6, 198.51.100.1, 10.0.0.3"], "198.51.100.1"),
            (vec!["6.6.6.6", "198.51.100.1", "10.0.0.3"], "198.51.100.1"),
            (vec!["garbage, 198.51.100.1"], "198.51.100.1"),
            (vec!["198.51.100.1:4711"], "198.51.100.1"),
            (vec!["[2001:db8::1]:4711"], "2001:db8::1"),
            // All trusted: the left-most one is as far as the chain goes.
            (vec!["10.0.0.9, 10.0.0.3"], "10.0.0.9"),
            // An entry a trusted proxy wrote that is not an address stops the walk.
            (vec!["198.51.100.1, garbage, 10.0.0.3"], "10.0.0.3"),
            (vec!["nonsense"], "127.0.0.1"),
            (vec![], "127.0.0.1"),
        ];
        for (lines, want) in cases {
            assert_eq!(proxies.client_address(peer, &headers(&lines)), ip(want), "{lines:?}");
        }
    }

    /// Bytes that are not text, written by the client to the left of what the proxies
    /// appended on the same line, neither hide the client nor make it the proxy.
    #[test]
    fn bytes_that_are_not_text_do_not_hide_the_client() {
        let proxies = trusted(&["10.0.0.0/8"]);
        for line in [&b"\xff, 198.51.100.1"[..], b"6.6.6.6\x80, 198.51.100.1, 10.0.0.3"] {
            let mut map = HeaderMap::new();
            map.append(X_FORWARDED_FOR.clone(), HeaderValue::from_bytes(line).unwrap());
            assert_eq!(proxies.client_address(ip("10.0.0.2"), &map), ip("198.51.100.1"));
        }
    }
}
