//! DNS-rebinding protection for `/mcp`: the `Host` a request names, and
//! its `Origin` when a browser sends one, must be names this server
//! answers to. A web page whose name an attacker re-points at 127.0.0.1
//! reaches a loopback server with its own name in both headers; this
//! refuses it before anything runs (the MCP transport spec asks servers to
//! validate `Origin`, and rmcp checks `Host` the same way).

use super::McpError;
use http::HeaderValue;
use std::net::SocketAddr;

/// The names loopback is known by, always allowed.
const LOOPBACK: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The hosts `/mcp` answers to: the loopback names, the host of the
/// address the server listens on, and those the user adds
/// (`mcp-allowed-hosts`). An entry without a port allows that host on any
/// port; `host:port` (`[v6]:port` for IPv6) only on that port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    entries: Vec<Authority>,
}

/// A host (lowercase, IPv6 without brackets) and maybe a port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Authority {
    host: String,
    port: Option<u16>,
}

impl Authority {
    /// Reads `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6
    /// address.
    fn parse(text: &str) -> Option<Authority> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        if let Ok(v6) = text.parse::<std::net::Ipv6Addr>() {
            return Some(Authority {
                host: v6.to_string(),
                port: None,
            });
        }
        let authority: http::uri::Authority = text.parse().ok()?;
        // No user info: `a@b` names host b, and a list entry or a Host
        // header carrying one is not what anyone meant.
        if authority.as_str().contains('@') {
            return None;
        }
        let host = authority.host();
        if host.is_empty() {
            return None;
        }
        Some(Authority {
            host: normalize(host),
            port: authority.port_u16(),
        })
    }

    /// Whether `self`, an allow-list entry, allows `other`.
    fn allows(&self, other: &Authority) -> bool {
        self.host == other.host && self.port.is_none_or(|p| other.port == Some(p))
    }
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bracketed = self.host.contains(':');
        match (bracketed, self.port) {
            (false, None) => write!(f, "{}", self.host),
            (false, Some(p)) => write!(f, "{}:{p}", self.host),
            (true, None) => write!(f, "{}", self.host),
            (true, Some(p)) => write!(f, "[{}]:{p}", self.host),
        }
    }
}

/// Lowercase, without the brackets of an IPv6 literal.
fn normalize(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Why a request was refused: the 403's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostRejected {
    /// No `Host` header (nor an authority in the request line).
    #[error("a request to /mcp must name its host (the Host header)")]
    MissingHost,
    /// A `Host` not on the list.
    #[error(
        "Host `{host}` is not allowed on /mcp (protection against DNS rebinding); this server answers \
         to {allowed}; add the name with `mcp-allowed-hosts` in the `hearth serve --config` file or \
         with --mcp-allowed-host"
    )]
    Host {
        /// The host as sent (sanitized).
        host: String,
        /// The allowed hosts, listed.
        allowed: String,
    },
    /// An `Origin` not on the list.
    #[error(
        "Origin `{origin}` is not allowed on /mcp (protection against DNS rebinding and other web \
         pages); this server answers pages served from {allowed}; add the host with \
         `mcp-allowed-hosts` in the `hearth serve --config` file or with --mcp-allowed-host"
    )]
    Origin {
        /// The origin as sent (sanitized).
        origin: String,
        /// The allowed hosts, listed.
        allowed: String,
    },
}

impl AllowedHosts {
    /// The defaults for a server listening on `listen`, plus `extra`.
    ///
    /// # Errors
    ///
    /// [`McpError::BadAllowedHost`] naming an entry of `extra` that is not
    /// a host or `host:port`.
    pub fn new(listen: SocketAddr, extra: &[String]) -> Result<AllowedHosts, McpError> {
        let mut entries: Vec<Authority> = LOOPBACK
            .iter()
            .filter_map(|h| Authority::parse(h))
            .collect();
        entries.push(Authority {
            host: listen.ip().to_string(),
            port: None,
        });
        for entry in extra {
            let parsed = Authority::parse(entry).ok_or_else(|| McpError::BadAllowedHost {
                entry: crate::plugins::sanitize(entry, 256),
            })?;
            entries.push(parsed);
        }
        let mut unique: Vec<Authority> = Vec::with_capacity(entries.len());
        for e in entries {
            if !unique.contains(&e) {
                unique.push(e);
            }
        }
        Ok(AllowedHosts { entries: unique })
    }

    /// The list, for messages.
    pub fn describe(&self) -> String {
        self.entries
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Accepts a request whose `host` (the `Host` header, or the request
    /// line's authority) and `origin` (when sent) are allowed.
    ///
    /// # Errors
    ///
    /// [`HostRejected`] saying which header is not allowed, and what is.
    pub fn check(
        &self,
        host: Option<&str>,
        origin: Option<&HeaderValue>,
    ) -> Result<(), HostRejected> {
        let host_text = host.ok_or(HostRejected::MissingHost)?;
        let allowed = |a: &Authority| self.entries.iter().any(|e| e.allows(a));
        match Authority::parse(host_text) {
            Some(a) if allowed(&a) => {}
            _ => {
                return Err(HostRejected::Host {
                    host: crate::plugins::sanitize(host_text, 256),
                    allowed: self.describe(),
                });
            }
        }
        let Some(origin) = origin else {
            // Not from a browser (browsers send Origin on every POST and
            // on cross-origin requests): the Host check is what applies.
            return Ok(());
        };
        let text = String::from_utf8_lossy(origin.as_bytes());
        match origin_authority(&text) {
            Some(a) if allowed(&a) => Ok(()),
            _ => Err(HostRejected::Origin {
                origin: crate::plugins::sanitize(&text, 256),
                allowed: self.describe(),
            }),
        }
    }
}

/// The host and port of an `Origin` (`scheme://host[:port]`), the
/// scheme's default port when none is written. `null` (a sandboxed or
/// local-file page, which could be anyone's) has none.
fn origin_authority(origin: &str) -> Option<Authority> {
    let uri: http::Uri = origin.trim().parse().ok()?;
    let default_port = match uri.scheme_str()? {
        s if s.eq_ignore_ascii_case("http") => 80,
        s if s.eq_ignore_ascii_case("https") => 443,
        _ => return None,
    };
    let mut authority = Authority::parse(uri.authority()?.as_str())?;
    authority.port.get_or_insert(default_port);
    Some(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(extra: &[&str]) -> AllowedHosts {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        AllowedHosts::new("127.0.0.1:8080".parse().unwrap(), &extra).unwrap()
    }

    #[test]
    fn loopback_names_pass_on_any_port_and_others_do_not() {
        let h = hosts(&[]);
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:9",
            "[::1]:8080",
            "LOCALHOST",
        ] {
            h.check(Some(ok), None)
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.2",
        ] {
            let e = h.check(Some(bad), None).unwrap_err();
            assert!(matches!(e, HostRejected::Host { .. }), "{bad}");
            assert!(e.to_string().contains("mcp-allowed-hosts"), "{e}");
        }
        assert_eq!(h.check(None, None), Err(HostRejected::MissingHost));
    }

    #[test]
    fn the_listen_address_and_added_names_pass() {
        let extra: Vec<String> = vec!["box.lan".into(), "proxy.example:8443".into()];
        let h = AllowedHosts::new("192.168.1.5:8080".parse().unwrap(), &extra).unwrap();
        h.check(Some("192.168.1.5:8080"), None).unwrap();
        h.check(Some("box.lan:8080"), None).unwrap();
        h.check(Some("proxy.example:8443"), None).unwrap();
        assert!(h.check(Some("proxy.example:8080"), None).is_err());
        assert!(AllowedHosts::new("127.0.0.1:1".parse().unwrap(), &["http://x/".into()]).is_err());
        assert!(AllowedHosts::new("127.0.0.1:1".parse().unwrap(), &["".into()]).is_err());
    }

    #[test]
    fn an_origin_must_be_allowed_too() {
        let h = hosts(&["app.example:443"]);
        let origin = |s: &'static str| HeaderValue::from_static(s);
        h.check(
            Some("localhost:8080"),
            Some(&origin("http://localhost:3000")),
        )
        .unwrap();
        h.check(Some("localhost:8080"), Some(&origin("https://app.example")))
            .unwrap();
        for bad in [
            "http://evil.example",
            "null",
            "http://app.example",
            "file://x",
        ] {
            let e = h
                .check(Some("localhost:8080"), Some(&origin(bad)))
                .unwrap_err();
            assert!(matches!(e, HostRejected::Origin { .. }), "{bad}: {e}");
        }
    }
}
