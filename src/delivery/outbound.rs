//! Where deliveries may not go: cloud metadata addresses (unless
//! `delivery.allowAddresses` lists them) and the broker's own admin listener. The check
//! runs on the address a connection actually reached, after DNS, before a byte of the
//! request is written, so a name that resolves there is caught as well as a literal.
//! Config validation refuses literal metadata addresses earlier, in every notation the
//! resolver reads as an address ([`crate::http::address::host_address`]).

use std::error::Error;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use crate::http::address::is_refused_metadata;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
