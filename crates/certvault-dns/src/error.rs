//! The crate's single error type.

/// Everything that can go wrong in `certvault-dns`.
///
/// Messages name servers, zones and record names, never key material: a TSIG secret can appear
/// in no message (the crate never formats it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// A domain name could not be parsed, or a record name is outside the zone.
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: String,
    },

    /// A TSIG key is unusable (empty name, secret not base64, unsupported algorithm).
    #[error("invalid TSIG key {key_name:?}: {reason}")]
    InvalidKey {
        /// The key's name (never the secret).
        key_name: String,
        /// Why it was refused.
        reason: String,
    },

    /// A server address is not `host:port`, or the host did not resolve.
    #[error("invalid DNS server address {server:?}: {reason}")]
    ServerAddress {
        /// The address as given.
        server: String,
        /// Why it was refused.
        reason: String,
    },

    /// The server did not accept the TSIG signature: unknown key name, wrong secret or wrong
    /// algorithm (BADKEY/BADSIG), or a clock too far off (BADTIME).
    #[error("TSIG key {key_name:?} rejected by {server}")]
    TsigRejected {
        /// The server that refused the key.
        server: String,
        /// The key's name.
        key_name: String,
    },

    /// The server answered the update with an error code (REFUSED: the key may not update that
    /// name or type; NOTAUTH: not authoritative for the zone; NOTZONE: the name is outside it, …).
    #[error("DNS update of {record} refused by {server}: {rcode}")]
    UpdateRefused {
        /// The server.
        server: String,
        /// The record name.
        record: String,
        /// The DNS response code, e.g. `REFUSED`.
        rcode: String,
    },

    /// A query failed with an error response code that makes the answer unusable.
    #[error("DNS query for {query} at {server} failed: {rcode}")]
    QueryFailed {
        /// The server.
        server: String,
        /// The query (`name TYPE`).
        query: String,
        /// The DNS response code.
        rcode: String,
    },

    /// No authoritative servers could be found for the zone.
    #[error("no authoritative name servers found for zone {zone}: {reason}")]
    NoNameServers {
        /// The zone.
        zone: String,
        /// Why.
        reason: String,
    },

    /// The server did not answer in time.
    #[error("DNS server {server} did not answer in time")]
    Timeout {
        /// The server.
        server: String,
    },

    /// A network or protocol failure talking to the server.
    #[error("DNS exchange with {server} failed: {detail}")]
    Network {
        /// The server.
        server: String,
        /// What happened (hickory's message; it never contains key material).
        detail: String,
    },
}
