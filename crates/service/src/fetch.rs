//! Fetching feeds and article pages over HTTP: a plain GET with a time
//! limit, a size limit and at most [`MAX_REDIRECTS`] redirects, each hop's
//! address checked before anything is sent to it.
//!
//! **Address rules.** By default only public addresses are fetched: a name
//! that resolves to a loopback, private (RFC 1918, unique-local), link-local,
//! carrier-grade NAT, multicast, unspecified or otherwise non-global address
//! is refused, so a feed URL or a redirect cannot make precis read an
//! intranet service or a cloud metadata endpoint. The connection goes to the
//! address that was checked (no second lookup a DNS answer could change).
//! An allow-list (`--allow-address`, for tests and intranets) names hosts or
//! networks (`127.0.0.1`, `10.0.0.0/8`, `intranet.example`) that may be
//! fetched anyway.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

/// Most redirects followed for one fetch.
pub const MAX_REDIRECTS: usize = 5;

/// What may be fetched, and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPolicy {
    /// Time for the whole fetch, redirects included.
    pub timeout: Duration,
    /// Most bytes of a body.
    pub max_bytes: u64,
    /// Hosts and networks allowed although not public.
    pub allow: Vec<AllowEntry>,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(20),
            max_bytes: 10 * 1024 * 1024,
            allow: Vec::new(),
        }
    }
}

/// An allow-list entry: a network (an address is a /32 or /128) or a host
/// name. Read from the same text on the command line and in the config file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum AllowEntry {
    /// Addresses in this network.
    Net(IpNet),
    /// This host name (as written in URLs), whatever it resolves to.
    Host(String),
}

impl TryFrom<String> for AllowEntry {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl std::str::FromStr for AllowEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty allow-list entry".into());
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(AllowEntry::Net(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(AllowEntry::Net(IpNet::from(ip)));
        }
        if s.contains('/') || s.contains(':') {
            return Err(format!(
                "`{s}` is neither an address, a network (10.0.0.0/8) nor a host name"
            ));
        }
        Ok(AllowEntry::Host(s.to_ascii_lowercase()))
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    /// Not an http(s) URL.
    #[error("`{0}` is not an http:// or https:// URL")]
    BadUrl(String),
    /// The address is not public and not allowed.
    #[error("{url}: {host} resolves to {address}, which is not a public address; precis does not fetch loopback, private or link-local addresses unless allowed (--allow-address {host})")]
    Forbidden {
        /// The URL.
        url: String,
        /// Its host.
        host: String,
        /// The address refused.
        address: IpAddr,
    },
    /// The URL's host is written as an address that is not public and not
    /// allowed.
    #[error("{url}: {address} is not a public address; precis does not fetch loopback, private or link-local addresses unless allowed (--allow-address {address})")]
    NotPublic {
        /// The URL.
        url: String,
        /// The address.
        address: IpAddr,
    },
    /// The name does not resolve.
    #[error("{url}: cannot resolve {host}: {reason}")]
    Resolve {
        /// The URL.
        url: String,
        /// Its host.
        host: String,
        /// Why.
        reason: String,
    },
    /// Too many redirects.
    #[error("{0}: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects(String),
    /// The body is larger than allowed.
    #[error("{url}: the response is larger than {max} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        max: u64,
    },
    /// The fetch took too long.
    #[error("{0}: no complete answer within the time limit")]
    Timeout(String),
    /// Not a success status.
    #[error("{url}: the server answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// Anything else on the way.
    #[error("{url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// A fetched document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The URL it was finally read from (after redirects).
    pub url: String,
    /// Its `Content-Type`, when given.
    pub content_type: Option<String>,
    /// Its bytes.
    pub body: Vec<u8>,
}

/// Whether an address is one anybody on the internet could reach: not
/// loopback, private, link-local, shared (CGNAT), multicast, documentation
/// or unspecified. An IPv6 address must be global unicast (`2000::/3`,
/// less the ranges reserved inside it); one that embeds an IPv4 address
/// (mapped, compatible, NAT64, 6to4, Teredo) is judged by the IPv4
/// address it leads to, so `64:ff9b::a00:5` is as private as 10.0.0.5.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let v4 = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                is_public(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
            };
            match v6.segments() {
                // IPv4-mapped `::ffff:a.b.c.d` and IPv4-compatible `::a.b.c.d`
                // (`::` and `::1` among them, as 0.0.0.0 and 0.0.0.1).
                [0, 0, 0, 0, 0, 0xffff | 0, hi, lo] => v4(hi, lo),
                // NAT64's well-known prefix, `64:ff9b::/96`.
                [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => v4(hi, lo),
                // 6to4, `2002:AABB:CCDD::/48`.
                [0x2002, hi, lo, ..] => v4(hi, lo),
                // Teredo, `2001::/32`: the server's address, and the
                // client's, stored inverted.
                [0x2001, 0, server_hi, server_lo, _, _, client_hi, client_lo] => {
                    v4(server_hi, server_lo) && v4(!client_hi, !client_lo)
                }
                s => global_unicast(s),
            }
        }
    }
}

/// Whether IPv6 segments are global unicast: `2000::/3`, less the IETF
/// protocol assignments `2001::/23` (NAT64's local-use `64:ff9b:1::/48`
/// and site-local `fec0::/10` lie outside it anyway) and the documentation
/// prefixes `2001:db8::/32` and `3fff::/20`.
fn global_unicast(s: [u16; 8]) -> bool {
    (s[0] & 0xe000) == 0x2000
        && !(s[0] == 0x2001 && s[1] < 0x0200)
        && !(s[0] == 0x2001 && s[1] == 0x0db8)
        && (s[0] & 0xfff0) != 0x3ff0
}

impl FetchPolicy {
    /// Refuses at once what no lookup could make fetchable: a scheme other
    /// than http(s), or a host written as an address this policy does not
    /// allow. A name is checked when it is fetched, against every address
    /// it resolves to then.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::BadUrl(url.to_string()));
        }
        let host = url
            .host_str()
            .ok_or_else(|| FetchError::BadUrl(url.to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let Ok(address) = host.parse::<IpAddr>() else {
            return Ok(());
        };
        if self.allows(host, address) {
            return Ok(());
        }
        Err(FetchError::NotPublic {
            url: url.to_string(),
            address,
        })
    }

    /// Whether `host` (resolving to `ip`) may be fetched.
    fn allows(&self, host: &str, ip: IpAddr) -> bool {
        is_public(ip)
            || self.allow.iter().any(|a| match a {
                AllowEntry::Net(net) => net.contains(&ip),
                AllowEntry::Host(h) => h.eq_ignore_ascii_case(host),
            })
    }

    /// The checked address to connect to for `url`.
    async fn vet(&self, url: &reqwest::Url) -> Result<SocketAddr, FetchError> {
        let host = url
            .host_str()
            .ok_or_else(|| FetchError::BadUrl(url.to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| FetchError::Resolve {
                url: url.to_string(),
                host: host.clone(),
                reason: e.to_string(),
            })?
            .collect();
        // Every address the name has must be allowed: which one a
        // connection would use is not ours to choose.
        if let Some(bad) = addrs.iter().find(|a| !self.allows(&host, a.ip())) {
            return Err(FetchError::Forbidden {
                url: url.to_string(),
                host,
                address: bad.ip(),
            });
        }
        addrs.first().copied().ok_or_else(|| FetchError::Resolve {
            url: url.to_string(),
            host,
            reason: "no address".into(),
        })
    }
}

/// The address to connect to for `url`, once checked under `policy` (for
/// requests that are not plain fetches, such as webhooks).
pub async fn vet_url(url: &reqwest::Url, policy: &FetchPolicy) -> Result<SocketAddr, FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::BadUrl(url.to_string()));
    }
    policy.vet(url).await
}

/// Fetches `url` under `policy` (see the module's documentation).
pub async fn fetch(url: &str, policy: &FetchPolicy) -> Result<Fetched, FetchError> {
    match tokio::time::timeout(policy.timeout, fetch_within(url, policy)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout(url.to_string())),
    }
}

/// [`fetch`] from synchronous code (the CLI).
pub fn fetch_blocking(url: &str, policy: &FetchPolicy) -> Result<Fetched, FetchError> {
    let http = |reason: String| FetchError::Http {
        url: url.to_string(),
        reason,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| http(format!("cannot start the fetch runtime: {e}")))?
        .block_on(fetch(url, policy))
}

async fn fetch_within(url: &str, policy: &FetchPolicy) -> Result<Fetched, FetchError> {
    let mut current = reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| FetchError::BadUrl(url.to_string()))?;
    for _ in 0..=MAX_REDIRECTS {
        let addr = policy.vet(&current).await?;
        let http = |reason: String, at: &reqwest::Url| FetchError::Http {
            url: at.to_string(),
            reason,
        };
        let host = current.host_str().unwrap_or_default().to_string();
        // No proxy: a proxy would resolve the name again, past the check.
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&host, addr)
            .user_agent(concat!("precis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| http(e.to_string(), &current))?;
        let response = client
            .get(current.clone())
            .send()
            .await
            .map_err(|e| http(e.to_string(), &current))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| http(format!("{status} without a Location"), &current))?;
            current = current
                .join(location)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| FetchError::BadUrl(location.to_string()))?;
            continue;
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                url: current.to_string(),
                status: status.as_u16(),
            });
        }
        let too_large = || FetchError::TooLarge {
            url: current.to_string(),
            max: policy.max_bytes,
        };
        if response
            .content_length()
            .is_some_and(|n| n > policy.max_bytes)
        {
            return Err(too_large());
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| http(e.to_string(), &current))?
        {
            if body.len() as u64 + chunk.len() as u64 > policy.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        return Ok(Fetched {
            url: current.to_string(),
            content_type,
            body,
        });
    }
    Err(FetchError::TooManyRedirects(url.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fd00::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.5",
            "::10.0.0.5",
            "::127.0.0.1",
            "64:ff9b::a00:5",
            "64:ff9b::127.0.0.1",
            "64:ff9b::169.254.169.254",
            "64:ff9b:1::808:808",
            "2002:a00:5::1",
            "2002:7f00:1::1",
            "2001:0:4136:e378:8000:63bf:f5ff:fffa", // Teredo to 10.0.0.5
            "2001:0:a00:5:8000:63bf:3fff:fdd2",     // Teredo via 10.0.0.5
            "2001:2::1",
            "2001:10::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "4000::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7", // Teredo to 8.8.8.8
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn allow_entries_parse_and_match() {
        let policy = FetchPolicy {
            allow: vec![
                "127.0.0.1".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
                "Intranet.Example".parse().unwrap(),
            ],
            ..FetchPolicy::default()
        };
        assert!(policy.allows("x", "127.0.0.1".parse().unwrap()));
        assert!(!policy.allows("x", "127.0.0.2".parse().unwrap()));
        assert!(policy.allows("x", "10.9.9.9".parse().unwrap()));
        assert!(policy.allows("intranet.example", "192.168.0.5".parse().unwrap()));
        assert!("10.0.0.0/99".parse::<AllowEntry>().is_err());
    }
}
