//! Where deliveries may not go: cloud metadata addresses (unless
//! `delivery.allowAddresses` lists them) and the broker's own admin listener. The check
//! runs on the address a connection actually reached, after DNS, before a byte of the
//! request is written, so a name that resolves there is caught as well as a literal.
//! Config validation refuses literal metadata addresses earlier, in every notation the
//! resolver reads as an address ([`host_address`]).

use std::error::Error;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The instance metadata services of the big clouds: AWS, GCP, Azure, OpenStack and
/// others (169.254.169.254), AWS ECS task metadata (169.254.170.2), AWS over IPv6
/// (fd00:ec2::254) and Alibaba Cloud (100.100.100.200).
pub const METADATA_ADDRESSES: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
];

/// Whether `ip` is a metadata address that `allowed` does not exempt.
pub fn is_refused_metadata(ip: IpAddr, allowed: &[IpAddr]) -> bool {
    let ip = ip.to_canonical();
    METADATA_ADDRESSES.contains(&ip) && !allowed.contains(&ip)
}

/// The address a URI host names literally, in any notation the system resolver takes
/// as an address rather than a name: `[v6]`, or IPv4 in the `inet_aton(3)` forms (see
/// [`parse_inet_aton`]). `None` for a host name.
pub fn host_address(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => parse_inet_aton(host).map(IpAddr::V4),
    }
}

/// An IPv4 address in the notations of `inet_aton(3)`, which glibc's `getaddrinfo`
/// (the resolver hyper's connector uses) accepts too: one to four parts separated by
/// dots, each decimal, octal (a leading `0`) or hexadecimal (`0x`); the last part fills
/// the bytes the others leave. So `2852039166`, `0xa9fea9fe`, `0251.0376.0251.0376`
/// and `169.254.43518` are all 169.254.169.254. `None` for anything else, e.g. a
/// trailing dot, an empty part, `8` or `9` in an octal part, or a part too large for
/// the bytes it fills.
pub fn parse_inet_aton(host: &str) -> Option<Ipv4Addr> {
    let mut parts = [0u32; 4];
    let mut count = 0;
    for text in host.split('.') {
        *parts.get_mut(count)? = inet_aton_part(text)?;
        count += 1;
    }
    let (last, leading) = parts[..count].split_last()?;
    // The leading parts are one byte each; the last fills the remaining 4 - (count - 1).
    let last_bits = 32 - 8 * leading.len() as u32;
    if leading.iter().any(|&p| p > 0xff) || u64::from(*last) >= 1u64 << last_bits {
        return None;
    }
    let high = leading
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, &p)| acc | p << (24 - 8 * i as u32));
    Some(Ipv4Addr::from(high | last))
}

/// One part of an `inet_aton` address.
fn inet_aton_part(text: &str) -> Option<u32> {
    let (digits, radix) = match text.as_bytes() {
        [b'0', b'x' | b'X', ..] => (&text[2..], 16),
        [b'0', _, ..] => (&text[1..], 8),
        _ => (text, 10),
    };
    // Empty (glibc refuses a bare `0x` too), or what from_str_radix would also take
    // (a leading '+').
    if digits.is_empty() || !digits.bytes().all(|b| char::from(b).is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

/// The addresses deliveries may not reach.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Metadata addresses the config allows anyway.
    pub allowed: Vec<IpAddr>,
    /// The admin listener's bound address.
    pub admin: Option<SocketAddr>,
}

/// Why a connection was dropped before the request was sent.
#[derive(Debug, thiserror::Error)]
#[error("refused to send to {peer}: {reason}")]
pub struct Refused {
    pub peer: SocketAddr,
    pub reason: &'static str,
}

impl Guard {
    /// Why a connection from `local` to `peer` must not be used, if it must not.
    pub fn check(&self, local: SocketAddr, peer: SocketAddr) -> Result<(), Refused> {
        let ip = peer.ip().to_canonical();
        if is_refused_metadata(ip, &self.allowed) {
            return Err(Refused {
                peer,
                reason: "a cloud metadata address (list it in delivery.allowAddresses to allow it)",
            });
        }
        if let Some(admin) = self.admin {
            // This host: loopback, or the very address the connection came from.
            let this_host = ip.is_loopback() || ip == local.ip().to_canonical();
            let admin_ip = admin.ip().to_canonical();
            let same = ip == admin_ip || (admin_ip.is_unspecified() && this_host);
            if peer.port() == admin.port() && same {
                return Err(Refused {
                    peer,
                    reason: "the broker's own admin listener",
                });
            }
        }
        Ok(())
    }
}

/// An [`HttpConnector`] that checks each new connection with a [`Guard`].
#[derive(Clone)]
pub struct GuardedConnector {
    pub inner: HttpConnector,
    pub guard: Arc<Guard>,
}

type BoxError = Box<dyn Error + Send + Sync>;

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let guard = self.guard.clone();
        Box::pin(async move {
            let io = connecting.await?;
            let (local, peer) = (io.inner().local_addr()?, io.inner().peer_addr()?);
            guard.check(local, peer)?;
            Ok(io)
        })
    }
}

/// Whether `error` (or what caused it) is a [`Refused`].
pub fn is_refused(error: &(dyn Error + 'static)) -> bool {
    let mut e = Some(error);
    while let Some(err) = e {
        if err.is::<Refused>() {
            return true;
        }
        e = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn metadata_addresses_are_refused_unless_allowed() {
        let local = addr("10.0.0.5:40000");
        let guard = Guard::default();
        for peer in [
            "169.254.169.254:80",
            "[fd00:ec2::254]:80",
            "[::ffff:169.254.169.254]:80",
            "169.254.170.2:80",
        ] {
            assert!(guard.check(local, addr(peer)).is_err(), "{peer}");
        }
        assert!(guard.check(local, addr("169.254.1.1:80")).is_ok());
        let allowed = Guard {
            allowed: vec!["169.254.169.254".parse().unwrap()],
            admin: None,
        };
        assert!(allowed.check(local, addr("169.254.169.254:80")).is_ok());
        assert!(allowed.check(local, addr("[fd00:ec2::254]:80")).is_err());
    }

    #[test]
    fn inet_aton_reads_every_ipv4_notation_the_resolver_does() {
        let metadata = Some(Ipv4Addr::new(169, 254, 169, 254));
        let table: &[(&str, Option<Ipv4Addr>)] = &[
            ("169.254.169.254", metadata),
            ("2852039166", metadata),
            ("0xa9fea9fe", metadata),
            ("0XA9FEA9FE", metadata),
            ("0251.0376.0251.0376", metadata),
            ("169.254.43518", metadata),
            ("169.16689662", metadata),
            ("0xa9.0xfe.0xa9.0xfe", metadata),
            ("0251.254.0xa9.254", metadata),
            ("00000000251.254.169.254", metadata),
            ("0", Some(Ipv4Addr::UNSPECIFIED)),
            ("0x", None),
            ("0x.0x.0x.0x", None),
            ("127.1", Some(Ipv4Addr::LOCALHOST)),
            ("4294967295", Some(Ipv4Addr::BROADCAST)),
            ("10.0.0.1", Some(Ipv4Addr::new(10, 0, 0, 1))),
            ("010.0.0.1", Some(Ipv4Addr::new(8, 0, 0, 1))),
            ("4294967296", None),
            ("256.1.1.1", None),
            ("1.1.1.256", None),
            ("1.1.65536", None),
            ("1.16777216", None),
            ("1.16777215", Some(Ipv4Addr::new(1, 255, 255, 255))),
            ("1.2.3.4.5", None),
            ("169.254.169.254.", None),
            (".1.2.3", None),
            ("1..2", None),
            ("", None),
            ("08", None),
            ("0x1g", None),
            ("+1", None),
            ("1.+2", None),
            ("-1", None),
            ("metadata.google.internal", None),
            ("a9fea9fe", None),
        ];
        for (host, want) in table {
            assert_eq!(parse_inet_aton(host), *want, "{host:?}");
        }
        assert_eq!(
            host_address("[fd00:ec2::254]"),
            Some(METADATA_ADDRESSES[2]),
            "IPv6 in brackets"
        );
        assert_eq!(
            host_address("fd00:ec2::254"),
            None,
            "IPv6 without brackets is no host"
        );
        assert_eq!(host_address("[169.254.169.254]"), None);
    }

    #[test]
    fn the_admin_listener_is_refused_on_every_address_of_this_host() {
        let on_all = Guard {
            allowed: vec![],
            admin: Some(addr("0.0.0.0:9090")),
        };
        let local = addr("10.0.0.5:40000");
        assert!(on_all.check(local, addr("127.0.0.1:9090")).is_err());
        assert!(on_all.check(local, addr("[::1]:9090")).is_err());
        assert!(
            on_all.check(local, addr("10.0.0.5:9090")).is_err(),
            "this host's own address"
        );
        assert!(
            on_all.check(local, addr("10.0.0.6:9090")).is_ok(),
            "another host"
        );
        assert!(
            on_all.check(local, addr("127.0.0.1:9091")).is_ok(),
            "another port"
        );
        let loopback = Guard {
            allowed: vec![],
            admin: Some(addr("127.0.0.1:9090")),
        };
        assert!(loopback.check(local, addr("127.0.0.1:9090")).is_err());
        assert!(
            loopback.check(local, addr("10.0.0.5:9090")).is_ok(),
            "not listening there"
        );
    }
}
