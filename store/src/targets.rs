//! Which URLs webhook and Slack channels may call. Outgoing requests are made on the server's
//! behalf, so a URL that reaches loopback, link-local or private addresses could be used to
//! probe the internal network (SSRF). Such targets are refused unless the policy allows them
//! (`TRACELY_WEBHOOK_ALLOW_PRIVATE=true`; `tracely dev` allows them).
//!
//! A URL is checked when a channel is saved, and every address a host name resolves to is
//! checked again when a request is sent, so a name that later resolves elsewhere (DNS
//! rebinding) is still refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use url::Url;

/// Whether private targets may be called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    pub allow_private: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{host} resolves to {addr}, a loopback, link-local or private address; \
         set TRACELY_WEBHOOK_ALLOW_PRIVATE=true to allow such targets"
    )]
    Private { host: String, addr: IpAddr },
}

/// Parses a channel URL: absolute `http` or `https` with a host and no credentials.
pub fn parse(url: &str) -> Result<Url, TargetError> {
    let parsed =
        Url::parse(url).map_err(|e| TargetError::Invalid(format!("{url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(TargetError::Invalid(format!(
            "the scheme must be http or https, not {:?}",
            parsed.scheme()
        )));
    }
    if parsed.host().is_none() {
        return Err(TargetError::Invalid(format!("{url:?} has no host")));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(TargetError::Invalid(
            "credentials in the URL are not allowed; use the channel secret".to_owned(),
        ));
    }
    Ok(parsed)
}

/// Checks a URL against the policy as far as can be told without sending: the scheme, an
/// address written in the URL, `localhost`, and the addresses the host resolves to now. A host
/// that does not resolve is let through; it is checked again at every send.
pub async fn check(url: &str, policy: TargetPolicy) -> Result<Url, TargetError> {
    let parsed = parse(url)?;
    if policy.allow_private {
        return Ok(parsed);
    }
    let host = parsed.host_str().unwrap_or_default().to_owned();
    if let Some(addr) = literal_address(&parsed) {
        return check_address(&host, addr, policy).map(|()| parsed);
    }
    if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
        return Err(TargetError::Private {
            host,
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        });
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    if let Ok(addrs) = tokio::net::lookup_host((host.as_str(), port)).await {
        for addr in addrs {
            check_address(&host, addr.ip(), policy)?;
        }
    }
    Ok(parsed)
}

/// The address of a URL whose host is an IP literal.
pub fn literal_address(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Refuses `addr` (which `host` resolved to) when the policy forbids it.
pub fn check_address(host: &str, addr: IpAddr, policy: TargetPolicy) -> Result<(), TargetError> {
    if policy.allow_private || !is_private(addr) {
        Ok(())
    } else {
        Err(TargetError::Private {
            host: host.to_owned(),
            addr,
        })
    }
}

/// Loopback, private, link-local, shared (carrier-grade NAT), unspecified, broadcast, multicast
/// and reserved addresses: none of them is a public webhook receiver.
pub fn is_private(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private_v4(v4),
            None => is_private_v6(v6),
        },
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || a == 0
        // 100.64.0.0/10, shared address space
        || (a == 100 && (b & 0xc0) == 64)
        // 198.18.0.0/15, benchmarking
        || (a == 198 && (b & 0xfe) == 18)
        // 192.0.0.0/24, protocol assignments
        || (a == 192 && b == 0 && c == 0)
        // 240.0.0.0/4, reserved
        || a >= 240
}

fn is_private_v6(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        // fc00::/7, unique local
        || (s[0] & 0xfe00) == 0xfc00
        // fe80::/10, link-local, and fec0::/10, the old site-local
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        // 64:ff9b::/96 and 64:ff9b:1::/48, NAT64, reach the IPv4 address they embed
        || (s[0] == 0x64 && s[1] == 0xff9b && is_private_v4(embedded(s[6], s[7])))
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
        // 2002::/16, 6to4, embeds an IPv4 address in its next 32 bits
        || (s[0] == 0x2002 && is_private_v4(embedded(s[1], s[2])))
        // ::a.b.c.d, the deprecated IPv4-compatible form
        || (s[..6] == [0; 6] && is_private_v4(embedded(s[6], s[7])))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DENY: TargetPolicy = TargetPolicy {
        allow_private: false,
    };
    const ALLOW: TargetPolicy = TargetPolicy {
        allow_private: true,
    };

    #[test]
    fn private_ranges_are_recognised() {
        for addr in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "fec0::1",
            "::127.0.0.1",
            "192.0.0.8",
        ] {
            assert!(
                is_private(addr.parse().unwrap()),
                "{addr} should be private"
            );
        }
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(
                !is_private(addr.parse().unwrap()),
                "{addr} should be public"
            );
        }
    }

    #[test]
    fn urls_must_be_plain_http() {
        assert!(parse("https://hooks.example.com/x").is_ok());
        assert!(parse("ftp://example.com").is_err());
        assert!(parse("not a url").is_err());
        assert!(parse("https://user:pw@example.com/").is_err());
    }

    #[tokio::test]
    async fn private_targets_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://[::1]/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:9000/",
            "http://api.localhost/",
        ] {
            let refused = check(url, DENY).await;
            assert!(
                matches!(refused, Err(TargetError::Private { .. })),
                "{url}: {refused:?}"
            );
            assert!(check(url, ALLOW).await.is_ok(), "{url} allowed");
        }
        assert!(check("https://203.0.113.7/hook", DENY).await.is_ok());
    }
}
