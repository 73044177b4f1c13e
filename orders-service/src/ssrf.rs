//! Webhook target rules: the shape of an endpoint URL, and the SSRF guard that keeps webhooks
//! away from loopback, private, link-local (cloud metadata) and other non-public addresses.
//!
//! The guard (on unless `ALLOW_PRIVATE_WEBHOOK_TARGETS=true`) applies twice: when an endpoint
//! is created or changed (IP literals, and every address its host name resolves to), and at
//! delivery time through [`GuardedResolver`], the dispatcher's DNS resolver. Because reqwest
//! connects only to the addresses a resolver returns, a name that resolved to a public address
//! at creation and to `127.0.0.1` later (DNS rebinding) is refused at the moment of connecting,
//! with no window between the check and the connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::Url;

/// Longest accepted endpoint URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// Why a URL cannot be a webhook target; the text is safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not an absolute URL.
    #[error("is not a valid absolute URL: {0}")]
    Invalid(String),
    /// Longer than [`MAX_URL_LEN`].
    #[error("must be at most {MAX_URL_LEN} bytes long")]
    TooLong,
    /// Neither http nor https.
    #[error("must be an http or https URL")]
    Scheme,
    /// Carries `user:password@`.
    #[error("must not carry credentials; webhooks are authenticated by their signature")]
    Credentials,
    /// Has a `#fragment`, which is never sent and so is surely a mistake.
    #[error("must not have a #fragment")]
    Fragment,
    /// The guard refused the target.
    #[error(transparent)]
    Forbidden(#[from] ForbiddenTarget),
    /// The host name does not resolve (only checked while the guard is on).
    #[error("host {host:?} does not resolve: {reason}")]
    Unresolvable {
        /// The host name.
        host: String,
        /// The resolver's answer.
        reason: String,
    },
}

/// A target address the SSRF guard refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host} is a {kind} address ({addr}); webhooks may only go to public addresses unless ALLOW_PRIVATE_WEBHOOK_TARGETS=true")]
pub struct ForbiddenTarget {
    /// The host as written in the URL.
    pub host: String,
    /// The refused address.
    pub addr: IpAddr,
    /// What kind of address it is (`loopback`, `private`, ...).
    pub kind: &'static str,
}

/// Checks the shape of an endpoint URL: absolute http(s), bounded length, no credentials, no
/// fragment. Says nothing about where it points.
pub fn parse_target_url(text: &str) -> Result<Url, UrlError> {
    if text.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong);
    }
    let url = Url::parse(text).map_err(|e| UrlError::Invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    if url.fragment().is_some() {
        return Err(UrlError::Fragment);
    }
    if url.host().is_none() {
        return Err(UrlError::Invalid("has no host".into()));
    }
    Ok(url)
}

/// Checks a URL's host when it is an IP literal (or `localhost`), without any DNS lookup.
/// `Ok(true)` means "an IP literal, checked"; `Ok(false)` means "a name, resolve it".
pub fn check_literal_host(url: &Url) -> Result<bool, ForbiddenTarget> {
    let Some(host) = url.host_str() else {
        return Ok(true);
    };
    if let Some(addr) = literal_ip(url) {
        return check_addr(&addr.to_string(), addr).map(|()| true);
    }
    // RFC 6761: `localhost` and its subdomains are loopback whatever DNS says.
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return Err(ForbiddenTarget {
            host: name,
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            kind: "loopback",
        });
    }
    Ok(false)
}

/// The URL's host when it is an IP literal. The URL parser has already normalised IPv4
/// spellings (`2130706433`, `0x7f.1`) to dotted quads.
pub fn literal_ip(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The full creation-time check of a target: the URL's shape, then (guard on) its IP literal
/// or every address its host name resolves to.
pub async fn check_target(text: &str, allow_private: bool) -> Result<Url, UrlError> {
    let url = parse_target_url(text)?;
    if allow_private || check_literal_host(&url)? {
        return Ok(url);
    }
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| UrlError::Unresolvable {
            host: host.clone(),
            reason: e.to_string(),
        })?;
    for addr in addrs {
        check_addr(&host, addr.ip())?;
    }
    Ok(url)
}

/// Refuses `addr` if it is not a public unicast address.
pub fn check_addr(host: &str, addr: IpAddr) -> Result<(), ForbiddenTarget> {
    match forbidden_kind(addr) {
        None => Ok(()),
        Some(kind) => Err(ForbiddenTarget {
            host: host.to_owned(),
            addr,
            kind,
        }),
    }
}

/// Ranges no webhook may reach, with the name shown in errors. IPv4 addresses embedded in
/// IPv6 (mapped, NAT64, 6to4) are unwrapped and checked against the IPv4 list first.
static FORBIDDEN: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    let v4 = |a, b, c, d, len| IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len));
    let v6 = |text: &str, len| {
        let addr: Ipv6Addr = text.parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
        IpNet::V6(Ipv6Net::new_assert(addr, len))
    };
    vec![
        (v4(0, 0, 0, 0, 8), "unspecified (\"this network\")"),
        (v4(10, 0, 0, 0, 8), "private"),
        (v4(100, 64, 0, 0, 10), "shared (CGNAT)"),
        (v4(127, 0, 0, 0, 8), "loopback"),
        (v4(169, 254, 0, 0, 16), "link-local (cloud metadata)"),
        (v4(172, 16, 0, 0, 12), "private"),
        (v4(192, 0, 0, 0, 24), "IETF protocol assignment"),
        (v4(192, 0, 2, 0, 24), "documentation"),
        (v4(192, 88, 99, 0, 24), "6to4 relay"),
        (v4(192, 168, 0, 0, 16), "private"),
        (v4(198, 18, 0, 0, 15), "benchmarking"),
        (v4(198, 51, 100, 0, 24), "documentation"),
        (v4(203, 0, 113, 0, 24), "documentation"),
        (v4(224, 0, 0, 0, 4), "multicast"),
        (v4(240, 0, 0, 0, 4), "reserved or broadcast"),
        (v6("::", 128), "unspecified"),
        (v6("::1", 128), "loopback"),
        (v6("64:ff9b:1::", 48), "local-use NAT64"),
        (v6("100::", 64), "discard-only"),
        (v6("2001::", 23), "IETF protocol assignment"),
        (v6("2001:db8::", 32), "documentation"),
        (v6("fc00::", 7), "private (unique local)"),
        (v6("fe80::", 10), "link-local"),
        (v6("fec0::", 10), "site-local"),
        (v6("ff00::", 8), "multicast"),
    ]
});

/// What kind of non-public address `addr` is, or `None` for a public unicast address.
pub fn forbidden_kind(addr: IpAddr) -> Option<&'static str> {
    let addr = match addr {
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    FORBIDDEN
        .iter()
        .find(|(net, _)| net.contains(&addr))
        .map(|(_, kind)| *kind)
}

/// The IPv4 address an IPv6 address stands for, where the network would route it there:
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`, SIIT),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002:AABB:CCDD::/48`).
/// Local-use NAT64 (`64:ff9b:1::/48`) may embed the address at several offsets, so it is
/// refused as a whole range instead.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new(
        (s[6] >> 8) as u8,
        (s[6] & 0xff) as u8,
        (s[7] >> 8) as u8,
        (s[7] & 0xff) as u8,
    );
    match s {
        // `::` and `::1` are their own IPv6 cases, not 0.0.0.0 and 0.0.0.1.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _]
        | [0, 0, 0, 0, 0xffff, 0, _, _]
        | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            (a & 0xff) as u8,
            (b >> 8) as u8,
            (b & 0xff) as u8,
        )),
        _ => None,
    }
}

/// The dispatcher's DNS resolver while the guard is on: resolves with the system resolver and
/// refuses the whole name if ANY of its addresses is forbidden (so a round-robin entry cannot
/// smuggle in a private address). reqwest connects only to what this returns, so the address
/// connected to is always one that was checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port in afterwards.
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                check_addr(&host, addr.ip())?;
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Finds a [`ForbiddenTarget`] in an error's source chain (a refusal by [`GuardedResolver`]
/// reaches the dispatcher wrapped in reqwest's and hyper's connect errors).
pub fn find_forbidden<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ForbiddenTarget> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<ForbiddenTarget>() {
            return Some(found);
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> Option<&'static str> {
        forbidden_kind(text.parse().unwrap())
    }

    #[test]
    fn non_public_addresses_are_refused() {
        for addr in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:c0a8:0101::1",
            "2001:db8::1",
        ] {
            assert!(kind(addr).is_some(), "{addr} should be refused");
        }
        assert_eq!(kind("169.254.169.254"), Some("link-local (cloud metadata)"));
        assert_eq!(kind("::ffff:127.0.0.1"), Some("loopback"));
    }

    #[test]
    fn local_use_nat64_and_ipv4_translated_addresses_are_refused() {
        // 64:ff9b:1::/48 is for local NAT64 deployments: it reaches the local network.
        assert_eq!(kind("64:ff9b:1::a00:1"), Some("local-use NAT64"));
        assert_eq!(kind("64:ff9b:1:ffff::8.8.8.8"), Some("local-use NAT64"));
        // IPv4-translated (SIIT) addresses stand for the IPv4 address in their tail.
        assert_eq!(kind("::ffff:0:127.0.0.1"), Some("loopback"));
        assert_eq!(kind("::ffff:0:10.0.0.1"), Some("private"));
        assert_eq!(
            kind("::ffff:0:169.254.169.254"),
            Some("link-local (cloud metadata)")
        );
        assert_eq!(kind("::ffff:0:8.8.8.8"), None);
    }

    #[test]
    fn public_addresses_are_allowed() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(kind(addr), None, "{addr} should be allowed");
        }
    }

    #[test]
    fn url_shape_rules_are_enforced() {
        assert!(parse_target_url("https://example.com/hook?x=1").is_ok());
        assert_eq!(
            parse_target_url("ftp://example.com/"),
            Err(UrlError::Scheme)
        );
        assert_eq!(
            parse_target_url("https://u:p@example.com/"),
            Err(UrlError::Credentials)
        );
        assert_eq!(
            parse_target_url("https://example.com/#x"),
            Err(UrlError::Fragment)
        );
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(parse_target_url(&long), Err(UrlError::TooLong));
        assert!(matches!(
            parse_target_url("not a url"),
            Err(UrlError::Invalid(_))
        ));
    }

    #[test]
    fn literal_hosts_are_checked_without_dns_including_obfuscated_forms() {
        for text in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::ffff:7f00:1]/",
            "http://localhost:8080/",
            "http://api.localhost./",
            "http://169.254.169.254/latest/meta-data",
        ] {
            let url = parse_target_url(text).unwrap();
            assert!(check_literal_host(&url).is_err(), "{text}");
        }
        let url = parse_target_url("http://8.8.8.8/").unwrap();
        assert_eq!(check_literal_host(&url), Ok(true));
        let url = parse_target_url("http://example.com/").unwrap();
        assert_eq!(check_literal_host(&url), Ok(false));
    }
}
