//! The `fetch` network guard: which addresses an automation may connect to.
//!
//! [`NetworkGuard::check`] is the whole decision, pure and synchronous: an address is
//! allowed when `fetch.allow_networks` is empty or holds it, `fetch.deny_networks` does
//! not hold it, and it is not sluice's own listen address (that `ip:port`, or the port on
//! loopback when sluice listens on every interface). The rest of this module applies it
//! where reqwest decides where to connect: [`GuardedResolver`] filters every DNS answer,
//! and [`NetworkGuard::check_url`] covers what no resolver sees (IP literals, including
//! decimal and hex forms, which the URL parser has already turned into dotted form) on
//! the first request and on every redirect.

use crate::config::Settings;
use ipnet::{IpNet, Ipv4Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// Why a connection is refused; `Display` is the fetch error the automation sees.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum Refused {
    /// The address is in `fetch.deny_networks`.
    #[error("fetch to {0} refused: address in fetch.deny_networks ({1})")]
    Denied(IpAddr, IpNet),
    /// `fetch.allow_networks` is set and does not hold the address.
    #[error("fetch to {0} refused: address not in fetch.allow_networks")]
    NotAllowed(IpAddr),
    /// The address and port are sluice's own server.
    #[error("fetch to {0} refused: sluice's own listen address ({1})")]
    Own(SocketAddr, String),
}

/// The networks `fetch` may reach, from the `fetch` and `listen` settings.
#[derive(Debug, Clone)]
pub(super) struct NetworkGuard {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    /// Sluice's own server: the networks it answers on, each with its port.
    own: Vec<(IpNet, u16)>,
    listen: String,
}

impl NetworkGuard {
    /// The guard of these settings.
    pub(super) fn new(settings: &Settings) -> NetworkGuard {
        NetworkGuard {
            allow: settings.fetch.allow_networks.clone(),
            deny: settings.fetch.deny_networks.clone(),
            own: own_endpoints(&settings.listen),
            listen: settings.listen.clone(),
        }
    }

    /// Whether a connection to `addr` is allowed.
    pub(super) fn check(&self, addr: SocketAddr) -> Result<(), Refused> {
        self.check_ip(addr.ip())?;
        let ip = destination(addr.ip());
        if self
            .own
            .iter()
            .any(|(net, port)| *port == addr.port() && net.contains(&ip))
        {
            return Err(Refused::Own(addr, self.listen.clone()));
        }
        Ok(())
    }

    /// Whether `ip` is allowed by the network lists, whatever the port.
    pub(super) fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        let effective = destination(ip);
        if let Some(net) = self.deny.iter().find(|n| n.contains(&effective)) {
            return Err(Refused::Denied(ip, *net));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&effective)) {
            return Err(Refused::NotAllowed(ip));
        }
        Ok(())
    }

    /// Checks what a resolver never sees: an IP-literal host, and for a name on one of
    /// sluice's own ports, every address it resolves to (the resolver is not told the port).
    /// `resolve` looks a name up; a name that does not resolve is left to the request to fail.
    fn check_host<R>(&self, url: &Url, resolve: R) -> Result<(), Refused>
    where
        R: FnOnce(&str, u16) -> Vec<SocketAddr>,
    {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Ok(());
        };
        match literal(host) {
            Some(ip) => self.check(SocketAddr::new(ip, port)),
            // Any address of the name counts: the connection may go to any of them.
            None if self.is_own_port(port) => resolve(host, port)
                .into_iter()
                .try_for_each(|addr| self.check(addr)),
            None => Ok(()),
        }
    }

    fn is_own_port(&self, port: u16) -> bool {
        self.own.iter().any(|(_, p)| *p == port)
    }

    /// Checks a request's URL before it is sent.
    pub(super) async fn check_url(&self, url: &Url) -> Result<(), Refused> {
        let mut found = Vec::new();
        if let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) {
            if literal(host).is_none() && self.is_own_port(port) {
                found = tokio::net::lookup_host((host, port))
                    .await
                    .map(Iterator::collect)
                    .unwrap_or_default();
            }
        }
        self.check_host(url, |_, _| found)
    }

    /// The redirect policy: reqwest's default (at most 10 hops) after checking each target.
    pub(super) fn redirect_policy(self: Arc<Self>) -> reqwest::redirect::Policy {
        let default = reqwest::redirect::Policy::default();
        reqwest::redirect::Policy::custom(move |attempt| {
            // The policy is synchronous; the lookup runs only for a name on sluice's own
            // port, which is rare and otherwise a way around the guard.
            let checked = self.check_host(attempt.url(), |name, port| {
                (name, port)
                    .to_socket_addrs()
                    .map(Iterator::collect)
                    .unwrap_or_default()
            });
            match checked {
                Ok(()) => default.redirect(attempt),
                Err(refused) => attempt.error(refused),
            }
        })
    }
}

/// The IP of a URL host that is one; the URL parser already wrote decimal and hex IPv4 forms
/// as dotted quads, and IPv6 in brackets.
fn literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The address a connection really reaches: an IPv4-mapped IPv6 address is its IPv4
/// form, and the unspecified address (0.0.0.0, ::) reaches this host's loopback.
fn destination(ip: IpAddr) -> IpAddr {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// Where sluice's own server answers. On every interface (or a name, which can only be a
/// local one) that is at least the port on loopback; port 0 is unknown until bound.
fn own_endpoints(listen: &str) -> Vec<(IpNet, u16)> {
    let loopback = |port| {
        vec![
            (
                IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
                port,
            ),
            (IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)), port),
        ]
    };
    match listen.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => Vec::new(),
        Ok(addr) if addr.ip().is_unspecified() => loopback(addr.port()),
        Ok(addr) => vec![(IpNet::from(destination(addr.ip())), addr.port())],
        Err(_) => listen
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .filter(|port| *port != 0)
            .map(loopback)
            .unwrap_or_default(),
    }
}

/// The system resolver, keeping only the addresses the guard allows.
pub(super) struct GuardedResolver(pub Arc<NetworkGuard>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .filter(|addr| match guard.check_ip(addr.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        refused.get_or_insert(r);
                        false
                    }
                })
                .collect();
            match refused {
                Some(r) if allowed.is_empty() => Err(r.into()),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn guard(deny: &[&str], allow: &[&str], listen: &str) -> NetworkGuard {
        let mut settings = Settings::default();
        settings.fetch.deny_networks = nets(deny);
        settings.fetch.allow_networks = nets(allow);
        settings.listen = listen.to_owned();
        NetworkGuard::new(&settings)
    }

    fn at(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    #[test]
    fn defaults_refuse_link_local_and_keep_loopback_and_private_ranges() {
        let g = NetworkGuard::new(&Settings::default());
        let refused = g.check(at("169.254.169.254:80")).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "fetch to 169.254.169.254 refused: address in fetch.deny_networks (169.254.0.0/16)"
        );
        assert!(matches!(
            g.check(at("[fe80::1]:443")),
            Err(Refused::Denied(_, net)) if net == "fe80::/10".parse::<IpNet>().unwrap()
        ));
        for ok in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "10.1.2.3:80",
            "172.16.0.1:80",
            "192.168.1.1:80",
            "[fd00::1]:80",
            "93.184.216.34:443",
            "169.253.255.255:80",
            "169.255.0.0:80",
            "[fec0::1]:80",
        ] {
            assert_eq!(g.check(at(ok)), Ok(()), "{ok}");
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_is_checked_as_ipv4() {
        let g = NetworkGuard::new(&Settings::default());
        assert!(matches!(
            g.check(at("[::ffff:169.254.1.1]:80")),
            Err(Refused::Denied(..))
        ));
        let g = guard(&["127.0.0.0/8"], &[], "127.0.0.1:0");
        assert!(g.check_ip("::ffff:127.0.0.1".parse().unwrap()).is_err());
        let g = guard(&[], &["10.0.0.0/8"], "127.0.0.1:0");
        assert_eq!(g.check_ip("::ffff:10.0.0.1".parse().unwrap()), Ok(()));
        // Only the mapped form is IPv4: the deprecated compatible form ::a.b.c.d is not.
        let g = guard(&["169.254.0.0/16"], &[], "127.0.0.1:0");
        assert_eq!(g.check_ip("::169.254.1.1".parse().unwrap()), Ok(()));
    }

    #[test]
    fn the_unspecified_address_counts_as_loopback() {
        let g = guard(&["127.0.0.0/8", "::1/128"], &[], "127.0.0.1:0");
        assert!(g.check(at("0.0.0.0:80")).is_err());
        assert!(g.check(at("[::]:80")).is_err());
        assert!(g.check(at("[::ffff:0.0.0.0]:80")).is_err());
    }

    #[test]
    fn allow_list_limits_and_deny_list_wins() {
        let g = guard(
            &["10.9.0.0/16"],
            &["10.0.0.0/8", "2001:db8::/32"],
            "127.0.0.1:0",
        );
        assert_eq!(g.check(at("10.1.1.1:80")), Ok(()));
        assert_eq!(g.check(at("[2001:db8::5]:80")), Ok(()));
        assert_eq!(
            g.check(at("11.0.0.1:80")).unwrap_err().to_string(),
            "fetch to 11.0.0.1 refused: address not in fetch.allow_networks"
        );
        assert!(matches!(
            g.check(at("[2001:db9::1]:80")),
            Err(Refused::NotAllowed(_))
        ));
        // Deny wins even where a wider allow entry holds the address.
        assert!(matches!(
            g.check(at("10.9.3.4:80")),
            Err(Refused::Denied(..))
        ));
        let g = guard(&[], &[], "127.0.0.1:0");
        assert_eq!(g.check(at("169.254.169.254:80")), Ok(()));
    }

    #[test]
    fn own_listen_address_is_refused_on_its_port_only() {
        let g = guard(&[], &[], "127.0.0.1:3003");
        assert_eq!(
            g.check(at("127.0.0.1:3003")).unwrap_err().to_string(),
            "fetch to 127.0.0.1:3003 refused: sluice's own listen address (127.0.0.1:3003)"
        );
        assert!(g.check(at("[::ffff:127.0.0.1]:3003")).is_err());
        assert!(g.check(at("0.0.0.0:3003")).is_err());
        assert_eq!(g.check(at("127.0.0.1:3004")), Ok(()));
        assert_eq!(g.check(at("127.0.0.2:3003")), Ok(()));
        // The port alone tells nothing: the resolver's check never refuses own addresses.
        assert_eq!(g.check_ip("127.0.0.1".parse().unwrap()), Ok(()));

        for every in ["0.0.0.0:3003", "[::]:3003", "localhost:3003"] {
            let g = guard(&[], &[], every);
            for own in [
                "127.0.0.1:3003",
                "127.9.9.9:3003",
                "[::1]:3003",
                "[::]:3003",
            ] {
                assert!(
                    matches!(g.check(at(own)), Err(Refused::Own(..))),
                    "{every} {own}"
                );
            }
            assert_eq!(g.check(at("10.0.0.1:3003")), Ok(()), "{every}");
            assert_eq!(g.check(at("127.0.0.1:80")), Ok(()), "{every}");
        }
        let g = guard(&[], &[], "10.0.0.5:3003");
        assert!(g.check(at("10.0.0.5:3003")).is_err());
        assert_eq!(g.check(at("127.0.0.1:3003")), Ok(()));
        // Port 0 is chosen at bind time: nothing to refuse.
        assert!(guard(&[], &[], "127.0.0.1:0").own.is_empty());
    }

    #[test]
    fn urls_are_checked_by_literal_and_names_on_own_port_by_every_address() {
        let g = guard(&["127.0.0.2/32"], &[], "127.0.0.1:3003");
        let url = |u: &str| Url::parse(u).unwrap();
        let never = |_: &str, _: u16| -> Vec<SocketAddr> { panic!("no lookup expected") };
        for refused in [
            "http://127.0.0.2:8080/",
            "http://2130706434:8080/",
            "http://0x7f000002/",
            "http://127.1:3003/",
            "http://[::ffff:127.0.0.1]:3003/",
        ] {
            assert!(g.check_host(&url(refused), never).is_err(), "{refused}");
        }
        assert_eq!(g.check_host(&url("http://127.0.0.1:8080/"), never), Ok(()));
        // A name on another port is left to the resolver.
        assert_eq!(
            g.check_host(&url("http://example.test:8080/"), never),
            Ok(())
        );
        let local = |_: &str, port| {
            vec![
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
                SocketAddr::new([127, 0, 0, 1].into(), port),
            ]
        };
        assert!(matches!(
            g.check_host(&url("http://rebind.test:3003/"), local),
            Err(Refused::Own(..))
        ));
        let elsewhere = |_: &str, port| vec![SocketAddr::new([10, 0, 0, 1].into(), port)];
        assert_eq!(
            g.check_host(&url("http://other.test:3003/"), elsewhere),
            Ok(())
        );
    }
}
