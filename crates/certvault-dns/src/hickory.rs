//! Every hickory type lives in this module: the rest of the crate (and certvault) sees plain
//! Rust types and [`DnsError`]. hickory's API moves between minor versions (0.24 → 0.26 moved
//! the client into `hickory-net`), so an upgrade touches this file only.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::{DnsRequestOptions, DnsResponse, Query, ResponseCode};
use hickory_net::proto::rr::rdata::TXT;
use hickory_net::proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_net::proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::DnsHandle;
use hickory_net::{DnsError as HickoryDnsError, NetError};

use crate::DnsError;

/// TSIG fudge (allowed clock difference), seconds: BIND's and RFC 8945's default.
const TSIG_FUDGE: u16 = 300;

/// A parsed, fully qualified domain name (lower-case comparison is hickory's).
#[derive(Clone)]
pub(crate) struct Fqdn(Name);

impl Fqdn {
    pub(crate) fn parse(name: &str) -> Result<Self, DnsError> {
        let trimmed = name.trim();
        if trimmed.is_empty() || trimmed == "." {
            return Err(DnsError::InvalidName {
                name: name.to_owned(),
                reason: "empty name".into(),
            });
        }
        let mut n = Name::from_ascii(trimmed).map_err(|e| DnsError::InvalidName {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        n.set_fqdn(true);
        Ok(Self(n))
    }

    /// `self` is `other` or an ancestor of it.
    pub(crate) fn is_zone_of(&self, other: &Self) -> bool {
        self.0.zone_of(&other.0)
    }

    /// The parent name, `None` at the root.
    pub(crate) fn parent(&self) -> Option<Self> {
        if self.0.is_root() {
            None
        } else {
            Some(Self(self.0.base_name()))
        }
    }

    pub(crate) fn is_root(&self) -> bool {
        self.0.is_root()
    }
}

impl std::fmt::Display for Fqdn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A TSIG signer (hmac-sha256). The secret is copied into hickory's signer only for the length
/// of one exchange.
pub(crate) fn tsig_signer(key_name: &str, secret: &[u8]) -> Result<TSigner, DnsError> {
    let name = Fqdn::parse(key_name).map_err(|e| DnsError::InvalidKey {
        key_name: key_name.to_owned(),
        reason: e.to_string(),
    })?;
    TSigner::new(
        secret.to_vec(),
        TsigAlgorithm::HmacSha256,
        name.0,
        TSIG_FUDGE,
    )
    .map_err(|e| DnsError::InvalidKey {
        key_name: key_name.to_owned(),
        reason: e.to_string(),
    })
}

/// What one update does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpdateOp {
    /// RFC 2136 §2.5.1: add to the RRset (other values stay).
    AppendTxt,
    /// RFC 2136 §2.5.4: delete this one RR (other values stay).
    DeleteTxt,
}

/// One RFC 2136 update, TSIG-signed, over UDP.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn update(
    server: SocketAddr,
    server_label: &str,
    key_name: &str,
    signer: TSigner,
    zone: &Fqdn,
    record: &Fqdn,
    value: &str,
    ttl: u32,
    op: UpdateOp,
    timeout: Duration,
) -> Result<(), DnsError> {
    if !zone.is_zone_of(record) {
        return Err(DnsError::InvalidName {
            name: record.to_string(),
            reason: format!("not inside zone {zone}"),
        });
    }
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::new())
        .with_timeout(Some(timeout))
        .with_signer(Some(signer))
        .build();
    let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    let bg = tokio::spawn(bg);
    let rr = Record::from_rdata(
        record.0.clone(),
        ttl,
        RData::TXT(TXT::new(vec![value.to_owned()])),
    );
    let result = match op {
        UpdateOp::AppendTxt => client.append(rr, zone.0.clone(), false).await,
        UpdateOp::DeleteTxt => client.delete_by_rdata(rr, zone.0.clone()).await,
    };
    bg.abort();
    let response = result.map_err(|e| map_net_error(e, server_label, Some(key_name)))?;
    match response.metadata.response_code {
        ResponseCode::NoError => Ok(()),
        ResponseCode::BADSIG | ResponseCode::BADKEY | ResponseCode::BADTIME => {
            Err(DnsError::TsigRejected {
                server: server_label.to_owned(),
                key_name: key_name.to_owned(),
            })
        }
        code => Err(DnsError::UpdateRefused {
            server: server_label.to_owned(),
            record: record.to_string(),
            rcode: rcode_name(code),
        }),
    }
}

/// Record types this crate queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QType {
    Txt,
    Ns,
    A,
    Aaaa,
    Soa,
}

impl QType {
    fn record_type(self) -> RecordType {
        match self {
            Self::Txt => RecordType::TXT,
            Self::Ns => RecordType::NS,
            Self::A => RecordType::A,
            Self::Aaaa => RecordType::AAAA,
            Self::Soa => RecordType::SOA,
        }
    }
}

/// The parts of an answer the crate uses, as plain types.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    /// `NOERROR`, `NXDOMAIN`, …
    pub(crate) rcode: String,
    pub(crate) no_error: bool,
    pub(crate) nx_domain: bool,
    /// The AA bit.
    pub(crate) authoritative: bool,
    /// TXT answers owned by the query name, each record's strings concatenated.
    pub(crate) txt: Vec<Vec<u8>>,
    /// NS names in the answer section.
    pub(crate) ns: Vec<String>,
    /// SOA owner names in the answer or authority section.
    pub(crate) soa_owners: Vec<String>,
    /// Addresses in the answer section (A/AAAA).
    pub(crate) ips: Vec<IpAddr>,
    /// Glue: (owner name, address) from the additional section.
    pub(crate) glue: Vec<(String, IpAddr)>,
}

/// A plain query over UDP (TCP retry when truncated is not needed for the small answers this
/// crate asks for). `recursion` sets the RD bit.
pub(crate) async fn query(
    server: SocketAddr,
    server_label: &str,
    name: &Fqdn,
    qtype: QType,
    recursion: bool,
    timeout: Duration,
) -> Result<Answer, DnsError> {
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::new())
        .with_timeout(Some(timeout))
        .build();
    let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    let bg = tokio::spawn(bg);
    let mut options = DnsRequestOptions::default();
    options.recursion_desired = recursion;
    options.use_edns = true;
    let mut q = Query::query(name.0.clone(), qtype.record_type());
    q.set_query_class(DNSClass::IN);
    let mut responses = client.lookup(q, options);
    let first = responses.next().await;
    bg.abort();
    let response = match first {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Err(map_net_error(e, server_label, None)),
        None => {
            return Err(DnsError::Timeout {
                server: server_label.to_owned(),
            });
        }
    };
    Ok(answer_from(&response, name))
}

fn answer_from(response: &DnsResponse, name: &Fqdn) -> Answer {
    let code = response.metadata.response_code;
    let mut a = Answer {
        rcode: rcode_name(code),
        no_error: code == ResponseCode::NoError,
        nx_domain: code == ResponseCode::NXDomain,
        authoritative: response.metadata.authoritative,
        ..Answer::default()
    };
    for r in &response.answers {
        match &r.data {
            RData::TXT(txt) if r.name == name.0 => {
                a.txt.push(
                    txt.txt_data
                        .iter()
                        .flat_map(|s| s.iter().copied())
                        .collect(),
                );
            }
            RData::NS(ns) => a.ns.push(ns.0.to_ascii()),
            RData::A(ip) => a.ips.push(IpAddr::V4(ip.0)),
            RData::AAAA(ip) => a.ips.push(IpAddr::V6(ip.0)),
            RData::SOA(_) => a.soa_owners.push(r.name.to_ascii()),
            _ => {}
        }
    }
    for r in &response.authorities {
        if let RData::SOA(_) = &r.data {
            a.soa_owners.push(r.name.to_ascii());
        }
    }
    for r in &response.additionals {
        match &r.data {
            RData::A(ip) => a.glue.push((r.name.to_ascii(), IpAddr::V4(ip.0))),
            RData::AAAA(ip) => a.glue.push((r.name.to_ascii(), IpAddr::V6(ip.0))),
            _ => {}
        }
    }
    a
}

fn rcode_name(code: ResponseCode) -> String {
    code.to_str().to_uppercase()
}

/// hickory reports a TSIG failure in several shapes: the server answers BADSIG/BADKEY with an
/// empty MAC, which hickory's verifier reports as an opaque "truncated HMACs" message; a
/// response signed with another key is `TsigWrongKey`; a MAC mismatch is a verification
/// failure. All of them mean the same to a user: the key was not accepted.
fn map_net_error(e: NetError, server: &str, key_name: Option<&str>) -> DnsError {
    if let NetError::Timeout = e {
        return DnsError::Timeout {
            server: server.to_owned(),
        };
    }
    if let (
        NetError::Dns(HickoryDnsError::ResponseCode(
            ResponseCode::BADSIG | ResponseCode::BADKEY | ResponseCode::BADTIME,
        )),
        Some(k),
    ) = (&e, key_name)
    {
        return DnsError::TsigRejected {
            server: server.to_owned(),
            key_name: k.to_owned(),
        };
    }
    let detail = e.to_string();
    if let Some(k) = key_name {
        let lower = detail.to_ascii_lowercase();
        if lower.contains("hmac") || lower.contains("tsig") || lower.contains("signature") {
            return DnsError::TsigRejected {
                server: server.to_owned(),
                key_name: k.to_owned(),
            };
        }
    }
    if detail.to_ascii_lowercase().contains("timed out") {
        return DnsError::Timeout {
            server: server.to_owned(),
        };
    }
    DnsError::Network {
        server: server.to_owned(),
        detail,
    }
}
