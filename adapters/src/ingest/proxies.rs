//! Which client address to believe. The connection's peer is always known;
//! X-Forwarded-For is believed only when the peer is a configured trusted
//! proxy, and then the right-most address that is not itself a trusted proxy
//! is the client (entries to its left could have been written by anyone).

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// The networks whose peers may report a client address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// Trusts `networks`.
    pub fn new(networks: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies { networks }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|network| network.contains(&ip))
    }

    /// The client address a trusted `peer` reports in X-Forwarded-For
    /// (`forwarded_for` is each header value, in order), if any.
    pub fn client_ip<'a>(&self, peer: Option<IpAddr>, forwarded_for: impl Iterator<Item = &'a str>) -> Option<IpAddr> {
        if !peer.is_some_and(|peer| self.trusts(peer)) {
            return None;
        }
        let hops: Vec<IpAddr> = forwarded_for
            .flat_map(|value| value.split(','))
            .filter_map(|hop| IpAddr::from_str(hop.trim()).ok())
            .collect();
        hops.into_iter().rev().find(|hop| !self.trusts(*hop))
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of networks (`10.0.0.0/8`) or addresses.
    fn from_str(s: &str) -> Result<TrustedProxies, String> {
        let mut networks = Vec::new();
        for part in s.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let network = match part.parse::<IpNet>() {
                Ok(network) => network,
                Err(_) => IpNet::from(
                    part.parse::<IpAddr>()
                        .map_err(|_| format!("trusted proxy: expected an address or CIDR network, found {part:?}"))?,
                ),
            };
            networks.push(network);
        }
        Ok(TrustedProxies { networks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let proxies: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let untrusted = Some("203.0.113.9".parse().unwrap());
        assert_eq!(proxies.client_ip(untrusted, ["198.51.100.1"].into_iter()), None);
        let trusted = Some("10.1.2.3".parse().unwrap());
        assert_eq!(proxies.client_ip(trusted, ["198.51.100.1"].into_iter()), Some("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn the_client_is_the_rightmost_hop_that_is_not_a_trusted_proxy() {
        let proxies: TrustedProxies = "10.0.0.0/8, 192.168.1.1".parse().unwrap();
        let peer = Some("10.0.0.1".parse().unwrap());
        let header = ["6.6.6.6, 198.51.100.7", "192.168.1.1"];
        assert_eq!(proxies.client_ip(peer, header.into_iter()), Some("198.51.100.7".parse().unwrap()));
    }

    #[test]
    fn a_malformed_network_is_refused_with_its_text() {
        let err = "10.0.0.0/8,nope".parse::<TrustedProxies>().unwrap_err();
        assert_eq!(err, "trusted proxy: expected an address or CIDR network, found \"nope\"");
    }
}
