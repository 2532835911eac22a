//! Whether a server is on this machine: what decides if a token may travel to it over plain
//! `http://`, where anyone on the path could read it.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Whether every address `host` (a URI host: a name, an IPv4 literal or a bracketed IPv6
/// literal) names is a loopback address: `localhost`, a loopback IP literal, or a name that
/// resolves only to loopback addresses (`resolve` looks it up). An error says why it could
/// not be told.
pub fn is_loopback(
    host: &str,
    port: u16,
    resolve: impl FnOnce(&str, u16) -> io::Result<Vec<SocketAddr>>,
) -> Result<bool, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(is_loopback_ip(ip));
    }
    // RFC 6761: localhost is loopback, whatever a resolver would say.
    if host.trim_end_matches('.').eq_ignore_ascii_case("localhost") {
        return Ok(true);
    }
    let addresses = resolve(host, port).map_err(|err| format!("cannot resolve {host}: {err}"))?;
    if addresses.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    Ok(addresses.iter().all(|address| is_loopback_ip(address.ip())))
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
            assert_eq!(is_loopback(host, 7070, never), Ok(true), "{host}");
        }
        for host in ["192.0.2.1", "10.0.0.1", "0.0.0.0", "[::]", "[2001:db8::1]", "[::ffff:192.0.2.1]"] {
            assert_eq!(is_loopback(host, 7070, never), Ok(false), "{host}");
        }
    }

    #[test]
    fn a_name_is_loopback_only_when_every_address_it_resolves_to_is() {
        assert_eq!(is_loopback("cache.test", 7070, answers(&["127.0.0.1", "::1"])), Ok(true));
        assert_eq!(is_loopback("cache.test", 7070, answers(&["127.0.0.1", "192.0.2.1"])), Ok(false));
        assert_eq!(is_loopback("cache.test", 7070, answers(&["192.0.2.1"])), Ok(false));
        let err = is_loopback("cache.test", 7070, answers(&[])).unwrap_err();
        assert!(err.contains("cache.test resolves to no address"), "{err}");
        let err = is_loopback("cache.test", 7070, |_, _| Err(io::Error::other("no such host"))).unwrap_err();
        assert!(err.contains("cannot resolve cache.test: no such host"), "{err}");
    }
}
