//! Checking a Matrix OpenID token (client-server spec §OpenID): `GET
//! /_matrix/federation/v1/openid/userinfo?access_token=…` on the homeserver named by
//! `matrix_server_name`, found by server-server discovery (spec §Resolving server names:
//! IP literal or explicit port, `/.well-known/matrix/server`, SRV `_matrix-fed._tcp`, port 8448),
//! unless the configuration names its URL. The returned `sub` must belong to that server.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use serde::Deserialize;
use url::Url;

/// Bound on each HTTP request and DNS lookup of one verification.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Verifies OpenID tokens against users' homeservers.
#[derive(Debug)]
pub struct OpenIdVerifier {
    client: reqwest::Client,
    overrides: BTreeMap<String, Url>,
    resolver: Option<TokioResolver>,
}

/// Where to reach a homeserver's federation API: the URL (its host is what TLS verifies) and,
/// after SRV discovery, the address to connect to instead of resolving that host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL, e.g. `https://example.org:8448/`.
    pub base: Url,
    /// `(host, address)` to connect to for `base`'s host.
    pub connect_to: Option<(String, SocketAddr)>,
}

#[derive(Deserialize)]
struct UserInfo {
    sub: String,
}

#[derive(Deserialize)]
struct WellKnown {
    #[serde(rename = "m.server")]
    server: String,
}

impl OpenIdVerifier {
    /// A verifier with per-server-name base URL overrides (`matrixrtc.homeserver_urls`).
    /// Overrides that are not URLs are ignored with a warning (config validation checks them).
    pub fn new(overrides: &BTreeMap<String, String>) -> Self {
        let overrides = overrides
            .iter()
            .filter_map(|(name, url)| match Url::parse(url) {
                Ok(u) => Some((name.clone(), u)),
                Err(e) => {
                    tracing::warn!(server = %name, error = %e, "ignoring homeserver URL override");
                    None
                }
            })
            .collect();
        let client = reqwest::Client::builder()
            .timeout(LOOKUP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .unwrap_or_default();
        let resolver = TokioResolver::builder_tokio()
            .ok()
            .and_then(|b| b.build().ok());
        Self {
            client,
            overrides,
            resolver,
        }
    }

    /// Returns the Matrix user id the token belongs to. Errors carry a reason for the log.
    pub async fn verify(&self, access_token: &str, server_name: &str) -> Result<String, String> {
        let endpoint = self.endpoint(server_name).await?;
        let mut url = endpoint
            .base
            .join("/_matrix/federation/v1/openid/userinfo")
            .map_err(|e| format!("bad homeserver URL: {e}"))?;
        url.query_pairs_mut()
            .append_pair("access_token", access_token);
        let client = match &endpoint.connect_to {
            None => self.client.clone(),
            Some((host, addr)) => reqwest::Client::builder()
                .timeout(LOOKUP_TIMEOUT)
                .resolve(host, *addr)
                .build()
                .map_err(|e| format!("http client: {e}"))?,
        };
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("userinfo request to {server_name} failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!(
                "userinfo on {server_name} answered {}",
                resp.status()
            ));
        }
        let info: UserInfo = resp
            .json()
            .await
            .map_err(|e| format!("userinfo on {server_name}: bad body: {e}"))?;
        match user_server(&info.sub) {
            Some(s) if s == server_name => Ok(info.sub),
            _ => Err(format!(
                "userinfo on {server_name} named {} of another server",
                info.sub
            )),
        }
    }

    /// Resolves a server name to where its federation API listens.
    pub async fn endpoint(&self, server_name: &str) -> Result<Endpoint, String> {
        if let Some(base) = self.overrides.get(server_name) {
            return Ok(Endpoint {
                base: base.clone(),
                connect_to: None,
            });
        }
        let (host, port) = split_server_name(server_name)?;
        if port.is_some() || host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return direct(&host, port.unwrap_or(8448));
        }
        // 3. /.well-known/matrix/server delegation.
        if let Some(delegated) = self.well_known(&host).await {
            let (dhost, dport) = split_server_name(&delegated)?;
            if dport.is_some() || dhost.parse::<IpAddr>().is_ok() || dhost.starts_with('[') {
                return direct(&dhost, dport.unwrap_or(8448));
            }
            if let Some(ep) = self.srv(&dhost).await {
                return Ok(ep);
            }
            return direct(&dhost, 8448);
        }
        // 4. SRV, 5. port 8448.
        if let Some(ep) = self.srv(&host).await {
            return Ok(ep);
        }
        direct(&host, 8448)
    }

    async fn well_known(&self, host: &str) -> Option<String> {
        let url = format!("https://{host}/.well-known/matrix/server");
        let resp = self.client.get(&url).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let wk: WellKnown = resp.json().await.ok()?;
        (!wk.server.is_empty()).then_some(wk.server)
    }

    /// `_matrix-fed._tcp.<host>` (then the deprecated `_matrix._tcp`): the URL keeps `host`
    /// (TLS is checked against it) and connects to the SRV target.
    async fn srv(&self, host: &str) -> Option<Endpoint> {
        let resolver = self.resolver.as_ref()?;
        for prefix in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let query = format!("{prefix}.{host}.");
            let Ok(Ok(lookup)) =
                tokio::time::timeout(LOOKUP_TIMEOUT, resolver.srv_lookup(query)).await
            else {
                continue;
            };
            let best = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(srv) => Some(srv.clone()),
                    _ => None,
                })
                .min_by_key(|s| (s.priority, std::cmp::Reverse(s.weight)))?;
            let target = best.target.to_utf8();
            let target = target.trim_end_matches('.');
            let Ok(Ok(ips)) =
                tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(target)).await
            else {
                continue;
            };
            let ip = ips.iter().next()?;
            let base = Url::parse(&format!("https://{host}:{}/", best.port)).ok()?;
            return Some(Endpoint {
                base,
                connect_to: Some((host.to_string(), SocketAddr::new(ip, best.port))),
            });
        }
        None
    }
}

fn direct(host: &str, port: u16) -> Result<Endpoint, String> {
    let base = Url::parse(&format!("https://{host}:{port}/"))
        .map_err(|e| format!("bad server name {host}: {e}"))?;
    Ok(Endpoint {
        base,
        connect_to: None,
    })
}

/// Splits `host[:port]` (IPv6 literals in brackets). Errors on names that cannot be a Matrix
/// server name.
pub fn split_server_name(name: &str) -> Result<(String, Option<u16>), String> {
    let bad = || format!("invalid server name {name:?}");
    if name.is_empty()
        || name.len() > 255
        || name
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "-.:[]".contains(c)))
    {
        return Err(bad());
    }
    if let Some(rest) = name.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(bad)?;
        ip.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad())?),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        return Ok((format!("[{ip}]"), port));
    }
    match name.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_string(), Some(port.parse().map_err(|_| bad())?))),
        None => Ok((name.to_string(), None)),
    }
}

/// The server part of a Matrix user id (`@local:server` → `server`).
pub fn user_server(user_id: &str) -> Option<&str> {
    let rest = user_id.strip_prefix('@')?;
    let (_, server) = rest.split_once(':')?;
    (!server.is_empty()).then_some(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_split_into_host_and_port() {
        assert_eq!(
            split_server_name("example.org").unwrap(),
            ("example.org".into(), None)
        );
        assert_eq!(
            split_server_name("example.org:8448").unwrap(),
            ("example.org".into(), Some(8448))
        );
        assert_eq!(
            split_server_name("[::1]:8008").unwrap(),
            ("[::1]".into(), Some(8008))
        );
        assert!(split_server_name("exa mple.org").is_err());
        assert!(split_server_name("example.org/evil").is_err());
        assert!(split_server_name("example.org:notaport").is_err());
        assert!(split_server_name("").is_err());
    }

    #[test]
    fn user_server_is_everything_after_the_first_colon() {
        assert_eq!(user_server("@alice:example.org"), Some("example.org"));
        assert_eq!(
            user_server("@alice:example.org:8448"),
            Some("example.org:8448")
        );
        assert_eq!(user_server("alice:example.org"), None);
        assert_eq!(user_server("@alice"), None);
    }

    #[tokio::test]
    async fn override_wins_over_discovery() {
        let v = OpenIdVerifier::new(&BTreeMap::from([(
            "hs1.test".to_string(),
            "http://127.0.0.1:8008".to_string(),
        )]));
        let ep = v.endpoint("hs1.test").await.unwrap();
        assert_eq!(ep.base.as_str(), "http://127.0.0.1:8008/");
        assert_eq!(ep.connect_to, None);
    }

    #[tokio::test]
    async fn ip_literal_and_explicit_port_skip_discovery() {
        let v = OpenIdVerifier::new(&BTreeMap::new());
        assert_eq!(
            v.endpoint("10.0.0.1").await.unwrap().base.as_str(),
            "https://10.0.0.1:8448/"
        );
        assert_eq!(
            v.endpoint("example.org:443").await.unwrap().base.as_str(),
            "https://example.org/"
        );
    }
}
