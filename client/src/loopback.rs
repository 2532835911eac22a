//! Whether a server is on this machine: what decides if a token may travel to it over plain
//! `http://`, where anyone on the path could read it.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Where `host` (a URI host: a name, an IPv4 literal or a bracketed IPv6 literal) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// On this machine as written: a loopback IP literal, or `localhost`.
    Here,
    /// A name that resolved to loopback addresses only; connect to this one of them, never to
    /// what a second lookup answers (a resolver that answers differently then would take the
    /// connection, and the token on it, elsewhere).
    HereAt(SocketAddr),
    /// Not (only) on this machine.
    Elsewhere,
}

/// Whether every address `host` names is a loopback address: `localhost`, a loopback IP
/// literal, or a name that resolves only to loopback addresses (`resolve` looks it up). An
/// error says why it could not be told.
pub fn place(
    host: &str,
    port: u16,
    resolve: impl FnOnce(&str, u16) -> io::Result<Vec<SocketAddr>>,
) -> Result<Place, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(if is_loopback_ip(ip) { Place::Here } else { Place::Elsewhere });
    }
    // RFC 6761: localhost is loopback, whatever a resolver would say.
    if host.trim_end_matches('.').eq_ignore_ascii_case("localhost") {
        return Ok(Place::Here);
    }
    let addresses = resolve(host, port).map_err(|err| format!("cannot resolve {host}: {err}"))?;
    match addresses.first() {
        None => Err(format!("{host} resolves to no address")),
        Some(first) if addresses.iter().all(|address| is_loopback_ip(address.ip())) => {
            Ok(Place::HereAt(*first))
        }
        Some(_) => Ok(Place::Elsewhere),
    }
}

/// `127.0.0.0/8`, `::1` and `::ffff:127.x.y.z`.
fn is_loopback_ip(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The system resolver. It blocks, briefly and once per connection set up: only a token
/// bound for a plain-HTTP server named by a name other than `localhost` gets here.
pub fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
        panic!("literals and localhost are decided without a lookup")
    }

    fn answers(addresses: &'static [&'static str]) -> impl FnOnce(&str, u16) -> io::Result<Vec<SocketAddr>> {
        move |_, port| Ok(addresses.iter().map(|ip| SocketAddr::new(ip.parse().unwrap(), port)).collect())
    }

    #[test]
    fn literals_and_localhost_are_decided_as_written() {
        for host in ["127.0.0.1", "127.1.2.3", "[::1]", "[::ffff:127.0.0.1]", "localhost", "LocalHost."] {
            assert_eq!(place(host, 7070, never), Ok(Place::Here), "{host}");
        }
        for host in ["192.0.2.1", "10.0.0.1", "0.0.0.0", "[::]", "[2001:db8::1]", "[::ffff:192.0.2.1]"] {
            assert_eq!(place(host, 7070, never), Ok(Place::Elsewhere), "{host}");
        }
    }

    #[test]
    fn a_name_is_loopback_only_when_every_address_it_resolves_to_is() {
        let first = SocketAddr::new("127.0.0.1".parse().unwrap(), 7070);
        assert_eq!(place("cache.test", 7070, answers(&["127.0.0.1", "::1"])), Ok(Place::HereAt(first)));
        assert_eq!(place("cache.test", 7070, answers(&["127.0.0.1", "192.0.2.1"])), Ok(Place::Elsewhere));
        assert_eq!(place("cache.test", 7070, answers(&["192.0.2.1"])), Ok(Place::Elsewhere));
        let err = place("cache.test", 7070, answers(&[])).unwrap_err();
        assert!(err.contains("cache.test resolves to no address"), "{err}");
        let err = place("cache.test", 7070, |_, _| Err(io::Error::other("no such host"))).unwrap_err();
        assert!(err.contains("cannot resolve cache.test: no such host"), "{err}");
    }
}
