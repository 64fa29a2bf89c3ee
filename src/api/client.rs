//! Who the client is: the peer address, or — when the peer is a trusted proxy
//! (`server.trusted_proxies`) — the right-most `X-Forwarded-For` address that is not one.
//! Usage, the audit log, the access log and the failed-login throttle all use this address.

use std::net::{IpAddr, SocketAddr};

use crate::settings::Cidr;

/// The client of a request as berth records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    /// The peer's port when the peer is the client; a forwarded address has none.
    pub port: Option<u16>,
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => SocketAddr::new(self.ip, p).fmt(f),
            None => self.ip.fmt(f),
        }
    }
}

/// Walks `X-Forwarded-For` (every header line, in order, as one list) from the right: each
/// trusted proxy appended the address it saw, so the first address from the right that is
/// not trusted is the client. Anything left of it was written by the client and proves
/// nothing. Without a trusted peer the header is ignored: anyone can send it.
///
/// An entry that is not an address (`unknown`, garbage) ends the walk at the last trusted
/// hop; when every entry is trusted the left-most one is the client.
pub fn client_of<'a>(
    peer: SocketAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[Cidr],
) -> Client {
    let direct = Client {
        ip: peer.ip().to_canonical(),
        port: Some(peer.port()),
    };
    if trusted.is_empty() || !is_trusted(peer.ip(), trusted) {
        return direct;
    }
    let mut client = direct;
    for line in forwarded_for.rev() {
        for entry in line.rsplit(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = Client { ip, port: None };
            if !is_trusted(ip, trusted) {
                return client;
            }
        }
    }
    client
}

fn is_trusted(ip: IpAddr, trusted: &[Cidr]) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// `192.0.2.1`, `2001:db8::1`, and the forms with a port some proxies write
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_entry(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| Cidr::parse(c).unwrap()).collect()
    }

    fn walk(peer: &str, xff: &[&str], trusted: &[&str]) -> String {
        client_of(peer.parse().unwrap(), xff.iter().copied(), &cidrs(trusted)).to_string()
    }

    #[test]
    fn the_header_is_ignored_unless_the_peer_is_trusted() {
        assert_eq!(
            walk("203.0.113.5:4000", &["198.51.100.1"], &[]),
            "203.0.113.5:4000"
        );
        assert_eq!(
            walk("203.0.113.5:4000", &["198.51.100.1"], &["10.0.0.0/8"]),
            "203.0.113.5:4000"
        );
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        let t = ["10.0.0.0/8"];
        assert_eq!(walk("10.0.0.2:1", &["198.51.100.1"], &t), "198.51.100.1");
        // A client that forges the header only adds entries on the left.
        assert_eq!(
            walk("10.0.0.2:1", &["1.2.3.4, 198.51.100.1, 10.0.0.9"], &t),
            "198.51.100.1"
        );
        // Several header lines are one list, in order.
        assert_eq!(
            walk("10.0.0.2:1", &["1.2.3.4", "198.51.100.1", "10.1.1.1"], &t),
            "198.51.100.1"
        );
        // Ports and brackets some proxies write.
        assert_eq!(
            walk("10.0.0.2:1", &["198.51.100.1:5555"], &t),
            "198.51.100.1"
        );
        assert_eq!(
            walk("10.0.0.2:1", &["[2001:db8::7]:5555"], &t),
            "2001:db8::7"
        );
        assert_eq!(walk("10.0.0.2:1", &["[2001:db8::7]"], &t), "2001:db8::7");
    }

    #[test]
    fn odd_headers_end_the_walk_safely() {
        let t = ["10.0.0.0/8"];
        // No header, or an empty one: the peer.
        assert_eq!(walk("10.0.0.2:1", &[], &t), "10.0.0.2:1");
        assert_eq!(walk("10.0.0.2:1", &[" , "], &t), "10.0.0.2:1");
        // Garbage stops at the last trusted hop, never goes past it.
        assert_eq!(
            walk("10.0.0.2:1", &["198.51.100.1, unknown, 10.0.0.3"], &t),
            "10.0.0.3"
        );
        assert_eq!(walk("10.0.0.2:1", &["unknown"], &t), "10.0.0.2:1");
        // Every hop trusted: the left-most.
        assert_eq!(walk("10.0.0.2:1", &["10.0.0.7, 10.0.0.8"], &t), "10.0.0.7");
    }

    #[test]
    fn mapped_ipv4_peers_are_ipv4() {
        assert_eq!(
            walk("[::ffff:10.0.0.2]:1", &["198.51.100.1"], &["10.0.0.0/8"]),
            "198.51.100.1"
        );
        assert_eq!(
            walk("[::ffff:192.0.2.1]:80", &[], &["10.0.0.0/8"]),
            "192.0.2.1:80"
        );
    }

    #[test]
    fn trusted_proxies_are_validated_naming_the_key() {
        let yaml = |list: &str| {
            format!(
                "server: {{ listen: \"127.0.0.1:5000\", hostname: h.test, trusted_proxies: {list} }}\n\
                 cache: {{ dir: /tmp/x }}\n\
                 upstreams: [ {{ name: up, url: \"http://127.0.0.1:1\", host: u.test }} ]\n\
                 apps: [ {{ slug: acme, upstreams: [up] }} ]\n"
            )
        };
        let parse =
            |t: &str| crate::config::Config::parse(t, std::path::Path::new("/"), &|_: &str| None);
        let c = parse(&yaml("[\"10.0.0.0/8\", \"::1\"]")).unwrap();
        assert_eq!(c.server.trusted_proxies, cidrs(&["10.0.0.0/8", "::1/128"]));
        let e = parse(&yaml("[\"10.0.0.0/8\", \"10.0.0.0/40\"]")).unwrap_err();
        assert_eq!(e.key, "server.trusted_proxies[1]", "{e}");
        assert!(parse(&yaml("[]"))
            .unwrap()
            .server
            .trusted_proxies
            .is_empty());
    }
}
