//! certvault DNS for ACME DNS-01.
//!
//! * [`Rfc2136`]: dynamic updates (RFC 2136) signed with TSIG hmac-sha256 against a zone's
//!   primary: [`Rfc2136::append_txt`] adds one TXT value (other values of the name stay, so a
//!   wildcard and its apex can be validated at the same time) and [`Rfc2136::remove_txt`]
//!   deletes exactly one value.
//! * [`AuthoritativeCheck`]: asks each authoritative server of a zone directly, without
//!   recursion (RD=0), whether it serves a TXT value; [`PropagationReport::all_present`] is the
//!   "may we ask the CA to validate now" answer. Servers are found through the zone's NS
//!   records ([`NameServers::Discover`]) or given explicitly as `host:port`
//!   ([`NameServers::Explicit`]; test servers listen on non-standard ports).
//! * [`find_zone`]: the zone (SOA owner) a record name belongs to.
//!
//! All errors are [`DnsError`]. A [`TsigKey`] prints `[redacted]` in `Debug` and its secret is
//! zeroed on drop; no message of this crate contains it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod hickory;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use zeroize::Zeroizing;

pub use error::DnsError;
use hickory::{Fqdn, QType, UpdateOp};

/// Default time to wait for one DNS answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A TSIG key for hmac-sha256 (the algorithm `tsig-keygen -a hmac-sha256` makes).
#[derive(Clone)]
pub struct TsigKey {
    name: String,
    secret: Zeroizing<Vec<u8>>,
}

impl TsigKey {
    /// A key from its name and its base64 secret (the `secret "…";` of a BIND key clause).
    pub fn hmac_sha256(name: impl Into<String>, secret_base64: &str) -> Result<Self, DnsError> {
        let name = name.into();
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret_base64.trim())
            .map_err(|_| DnsError::InvalidKey {
                key_name: name.clone(),
                reason: "the secret is not valid base64".into(),
            })?;
        Self::from_bytes(name, secret)
    }

    /// A key from its name and raw secret bytes.
    pub fn from_bytes(name: impl Into<String>, secret: Vec<u8>) -> Result<Self, DnsError> {
        let name = name.into();
        let secret = Zeroizing::new(secret);
        if secret.is_empty() {
            return Err(DnsError::InvalidKey {
                key_name: name,
                reason: "the secret is empty".into(),
            });
        }
        // Validate the name once, here.
        hickory::tsig_signer(&name, &secret)?;
        Ok(Self { name, secret })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &"hmac-sha256")
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// Resolves `host:port` (a name or an IP literal; `[v6]:port` for IPv6).
async fn resolve_server(server: &str) -> Result<SocketAddr, DnsError> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = |reason: String| DnsError::ServerAddress {
        server: server.to_owned(),
        reason,
    };
    if !server.contains(':') {
        return Err(bad("expected host:port".into()));
    }
    let mut addrs = tokio::net::lookup_host(server)
        .await
        .map_err(|e| bad(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| bad("the host name has no address".into()))
}

/// RFC 2136 dynamic updates of one zone on one server (its primary), signed with a TSIG key.
///
/// ```no_run
/// # async fn f() -> Result<(), certvault_dns::DnsError> {
/// use certvault_dns::{Rfc2136, TsigKey};
/// let key = TsigKey::hmac_sha256("certvault", "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0")?;
/// let dns = Rfc2136::new("example.com", "ns1.example.com:53", key)?;
/// dns.append_txt("_acme-challenge.example.com", "value-for-apex", 60).await?;
/// dns.append_txt("_acme-challenge.example.com", "value-for-wildcard", 60).await?;
/// dns.remove_txt("_acme-challenge.example.com", "value-for-apex").await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Rfc2136 {
    zone: String,
    server: String,
    key: TsigKey,
    timeout: Duration,
}

impl Rfc2136 {
    /// Updates for `zone` sent to `server` (`host:port`), signed with `key`.
    pub fn new(zone: &str, server: &str, key: TsigKey) -> Result<Self, DnsError> {
        Fqdn::parse(zone)?;
        Ok(Self {
            zone: zone.to_owned(),
            server: server.to_owned(),
            key,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets the time to wait for the server's answer (default [`DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The zone.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The server, as given.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Adds the TXT value `value` at `record_name` (RFC 2136 "add to an RRset"). Values already
    /// there stay; adding a value that is already there changes nothing.
    pub async fn append_txt(
        &self,
        record_name: &str,
        value: &str,
        ttl: u32,
    ) -> Result<(), DnsError> {
        self.update(record_name, value, ttl, UpdateOp::AppendTxt)
            .await
    }

    /// Deletes the TXT value `value` at `record_name` (RFC 2136 "delete an RR from an RRset"),
    /// leaving the name's other values. Deleting a value that is not there changes nothing.
    pub async fn remove_txt(&self, record_name: &str, value: &str) -> Result<(), DnsError> {
        self.update(record_name, value, 0, UpdateOp::DeleteTxt)
            .await
    }

    async fn update(
        &self,
        record_name: &str,
        value: &str,
        ttl: u32,
        op: UpdateOp,
    ) -> Result<(), DnsError> {
        let zone = Fqdn::parse(&self.zone)?;
        let record = Fqdn::parse(record_name)?;
        let signer = hickory::tsig_signer(&self.key.name, &self.key.secret)?;
        let addr = resolve_server(&self.server).await?;
        hickory::update(
            addr,
            &self.server,
            &self.key.name,
            signer,
            &zone,
            &record,
            value,
            ttl,
            op,
            self.timeout,
        )
        .await
    }
}

/// Where the authoritative servers of a zone come from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameServers {
    /// Look up the zone's NS records (and their addresses) through a recursive resolver:
    /// `resolver` as `host:port`, or the first `nameserver` of `/etc/resolv.conf`. Each server
    /// is then asked on `port` (53 in real deployments).
    Discover {
        /// The recursive resolver; `None`: `/etc/resolv.conf`.
        resolver: Option<String>,
        /// The port the authoritative servers answer on.
        port: u16,
    },
    /// These servers (`host:port` each), not discovered.
    Explicit(Vec<String>),
}

impl Default for NameServers {
    fn default() -> Self {
        Self::Discover {
            resolver: None,
            port: 53,
        }
    }
}

/// One authoritative server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthServer {
    /// The NS name it was found under, or the `host:port` it was given as.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
}

/// What one authoritative server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerOutcome {
    /// The server is authoritative and serves the expected value.
    Present,
    /// The server is authoritative and does not serve the value (yet); `seen` are the values
    /// it does serve at the name.
    Missing {
        /// The TXT values the server has at the name (lossy UTF-8).
        seen: Vec<String>,
    },
    /// The server answered without the AA bit, or with an error code: it is not (or not yet)
    /// authoritative for the zone.
    NotAuthoritative {
        /// Its response code.
        rcode: String,
    },
    /// The server could not be asked (timeout, network error).
    Unreachable {
        /// Why.
        reason: String,
    },
}

/// The result of asking every authoritative server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropagationReport {
    /// Each server and its answer, in the order they were found.
    pub servers: Vec<(AuthServer, ServerOutcome)>,
}

impl PropagationReport {
    /// Every server (at least one) serves the value.
    pub fn all_present(&self) -> bool {
        !self.servers.is_empty()
            && self
                .servers
                .iter()
                .all(|(_, o)| matches!(o, ServerOutcome::Present))
    }

    /// A one-line description of the servers that do not serve the value yet, for status
    /// details ("waiting for ns2.example.com (127.0.0.2:53): missing").
    pub fn pending_summary(&self) -> String {
        let parts: Vec<String> = self
            .servers
            .iter()
            .filter(|(_, o)| !matches!(o, ServerOutcome::Present))
            .map(|(s, o)| {
                let what = match o {
                    ServerOutcome::Present => "present".to_owned(),
                    ServerOutcome::Missing { .. } => "value not served yet".to_owned(),
                    ServerOutcome::NotAuthoritative { rcode } => {
                        format!("not authoritative ({rcode})")
                    }
                    ServerOutcome::Unreachable { reason } => format!("unreachable: {reason}"),
                };
                format!("{} ({}): {what}", s.name, s.addr)
            })
            .collect();
        parts.join("; ")
    }
}

/// Checks a zone's authoritative servers directly (RD=0), never through caches.
#[derive(Clone, Debug)]
pub struct AuthoritativeCheck {
    zone: String,
    servers: NameServers,
    timeout: Duration,
}

impl AuthoritativeCheck {
    /// Checks for `zone`, with servers from `servers`.
    pub fn new(zone: &str, servers: NameServers) -> Result<Self, DnsError> {
        Fqdn::parse(zone)?;
        Ok(Self {
            zone: zone.to_owned(),
            servers,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets the time to wait for each answer (default [`DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The zone's authoritative servers (discovered or as given).
    pub async fn servers(&self) -> Result<Vec<AuthServer>, DnsError> {
        match &self.servers {
            NameServers::Explicit(list) => {
                if list.is_empty() {
                    return Err(DnsError::NoNameServers {
                        zone: self.zone.clone(),
                        reason: "the explicit server list is empty".into(),
                    });
                }
                let mut out = Vec::with_capacity(list.len());
                for s in list {
                    out.push(AuthServer {
                        name: s.clone(),
                        addr: resolve_server(s).await?,
                    });
                }
                Ok(out)
            }
            NameServers::Discover { resolver, port } => {
                let (resolver_addr, label) = recursive_resolver(resolver.as_deref()).await?;
                discover(&self.zone, resolver_addr, &label, *port, self.timeout).await
            }
        }
    }

    /// Asks every authoritative server for the TXT records at `record_name` and reports whether
    /// each serves `expected`.
    pub async fn check_txt(
        &self,
        record_name: &str,
        expected: &str,
    ) -> Result<PropagationReport, DnsError> {
        let zone = Fqdn::parse(&self.zone)?;
        let record = Fqdn::parse(record_name)?;
        if !zone.is_zone_of(&record) {
            return Err(DnsError::InvalidName {
                name: record_name.to_owned(),
                reason: format!("not inside zone {zone}"),
            });
        }
        let servers = self.servers().await?;
        let checks = servers.iter().map(|s| {
            let label = format!("{} ({})", s.name, s.addr);
            let record = record.clone();
            async move {
                match hickory::query(s.addr, &label, &record, QType::Txt, false, self.timeout).await
                {
                    Err(e) => ServerOutcome::Unreachable {
                        reason: e.to_string(),
                    },
                    Ok(a) if !a.authoritative || !(a.no_error || a.nx_domain) => {
                        ServerOutcome::NotAuthoritative { rcode: a.rcode }
                    }
                    Ok(a) => {
                        if a.txt.iter().any(|v| v.as_slice() == expected.as_bytes()) {
                            ServerOutcome::Present
                        } else {
                            ServerOutcome::Missing {
                                seen: a
                                    .txt
                                    .iter()
                                    .map(|v| String::from_utf8_lossy(v).into_owned())
                                    .collect(),
                            }
                        }
                    }
                }
            }
        });
        let outcomes = futures_util::future::join_all(checks).await;
        Ok(PropagationReport {
            servers: servers.into_iter().zip(outcomes).collect(),
        })
    }
}

/// The zone (SOA owner) that `record_name` belongs to, asked of a recursive resolver
/// (`host:port`, or `/etc/resolv.conf` when `None`).
pub async fn find_zone(record_name: &str, resolver: Option<&str>) -> Result<String, DnsError> {
    let (addr, label) = recursive_resolver(resolver).await?;
    let mut name = Fqdn::parse(record_name)?;
    loop {
        let a = hickory::query(addr, &label, &name, QType::Soa, true, DEFAULT_TIMEOUT).await?;
        if !(a.no_error || a.nx_domain) {
            return Err(DnsError::QueryFailed {
                server: label,
                query: format!("{name} SOA"),
                rcode: a.rcode,
            });
        }
        // An SOA in the answer (owned by the name) or in the authority section of a negative
        // answer names the zone.
        if let Some(owner) = a.soa_owners.first() {
            let owner = Fqdn::parse(owner)?;
            if owner.is_zone_of(&name) && !owner.is_root() {
                return Ok(owner.to_string());
            }
        }
        match name.parent() {
            Some(p) if !p.is_root() => name = p,
            _ => {
                return Err(DnsError::NoNameServers {
                    zone: record_name.to_owned(),
                    reason: "no SOA found for the name or any parent".into(),
                });
            }
        }
    }
}

async fn recursive_resolver(given: Option<&str>) -> Result<(SocketAddr, String), DnsError> {
    if let Some(r) = given {
        return Ok((resolve_server(r).await?, r.to_owned()));
    }
    let conf = tokio::fs::read_to_string("/etc/resolv.conf")
        .await
        .map_err(|e| DnsError::ServerAddress {
            server: "/etc/resolv.conf".into(),
            reason: e.to_string(),
        })?;
    let ip = conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(ip)) => ip.split('%').next()?.parse::<IpAddr>().ok(),
                _ => None,
            }
        })
        .next()
        .ok_or_else(|| DnsError::ServerAddress {
            server: "/etc/resolv.conf".into(),
            reason: "no nameserver line".into(),
        })?;
    let addr = SocketAddr::new(ip, 53);
    Ok((addr, addr.to_string()))
}

async fn discover(
    zone: &str,
    resolver: SocketAddr,
    label: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<AuthServer>, DnsError> {
    let zone_name = Fqdn::parse(zone)?;
    let a = hickory::query(resolver, label, &zone_name, QType::Ns, true, timeout).await?;
    if !a.no_error {
        return Err(DnsError::QueryFailed {
            server: label.to_owned(),
            query: format!("{zone_name} NS"),
            rcode: a.rcode,
        });
    }
    if a.ns.is_empty() {
        return Err(DnsError::NoNameServers {
            zone: zone.to_owned(),
            reason: format!("{label} returned no NS records"),
        });
    }
    let mut out = Vec::new();
    for ns in &a.ns {
        let mut ips: Vec<IpAddr> = a
            .glue
            .iter()
            .filter(|(owner, _)| owner.eq_ignore_ascii_case(ns))
            .map(|(_, ip)| *ip)
            .collect();
        if ips.is_empty() {
            let ns_name = Fqdn::parse(ns)?;
            for qt in [QType::A, QType::Aaaa] {
                if let Ok(ans) = hickory::query(resolver, label, &ns_name, qt, true, timeout).await
                {
                    ips.extend(ans.ips);
                }
            }
        }
        for ip in ips {
            let addr = SocketAddr::new(ip, port);
            if !out.iter().any(|s: &AuthServer| s.addr == addr) {
                out.push(AuthServer {
                    name: ns.clone(),
                    addr,
                });
            }
        }
    }
    if out.is_empty() {
        return Err(DnsError::NoNameServers {
            zone: zone.to_owned(),
            reason: format!("no addresses for the name servers {}", a.ns.join(", ")),
        });
    }
    Ok(out)
}
