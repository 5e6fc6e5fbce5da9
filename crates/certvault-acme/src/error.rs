//! The crate's single error type.

use std::fmt;
use std::time::Duration;

/// A problem document (RFC 7807 / RFC 8555 §6.7) sent by the CA.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaProblem {
    /// The problem type, e.g. `urn:ietf:params:acme:error:unauthorized` (empty when the CA sent
    /// none).
    pub problem_type: String,
    /// The CA's human-readable detail.
    pub detail: String,
    /// The HTTP status, when known.
    pub status: Option<u16>,
    /// Per-identifier subproblems: (identifier, type, detail).
    pub subproblems: Vec<(Option<String>, String, String)>,
    /// The `Retry-After` the CA sent with the problem (rateLimited, serverInternal, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Duration>,
}

impl CaProblem {
    /// The type without the `urn:ietf:params:acme:error:` prefix (`badNonce`, `rateLimited`, …).
    pub fn short_type(&self) -> &str {
        self.problem_type
            .strip_prefix("urn:ietf:params:acme:error:")
            .unwrap_or(&self.problem_type)
    }

    /// Whether the problem has the given short type (`"rateLimited"`).
    pub fn is(&self, short_type: &str) -> bool {
        self.short_type() == short_type
    }

    pub(crate) fn from_instant(p: &instant_acme::Problem, retry_after: Option<Duration>) -> Self {
        Self {
            problem_type: p.r#type.clone().unwrap_or_default(),
            detail: p.detail.clone().unwrap_or_default(),
            status: p.status,
            subproblems: p
                .subproblems
                .iter()
                .map(|s| {
                    (
                        s.identifier.as_ref().map(identifier_text),
                        s.r#type.clone().unwrap_or_default(),
                        s.detail.clone().unwrap_or_default(),
                    )
                })
                .collect(),
            retry_after,
        }
    }
}

fn identifier_text(i: &instant_acme::Identifier) -> String {
    match i {
        instant_acme::Identifier::Dns(d) => d.clone(),
        instant_acme::Identifier::Ip(ip) => ip.to_string(),
        other => format!("{other:?}"),
    }
}

impl fmt::Display for CaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = if self.problem_type.is_empty() {
            "(no type)"
        } else {
            &self.problem_type
        };
        write!(f, "{t}: {}", self.detail)?;
        for (id, ty, detail) in &self.subproblems {
            write!(f, "; {}: {ty}: {detail}", id.as_deref().unwrap_or("-"))?;
        }
        Ok(())
    }
}

/// Everything that can go wrong in `certvault-acme`. No message contains key material, the
/// account credential or an EAB key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The CA answered with a problem document (after the bounded retries for badNonce,
    /// rateLimited and serverInternal), or an authorization / order ended `invalid` with one.
    #[error("the ACME CA refused: {0}")]
    Ca(CaProblem),

    /// The CA could not be reached, or the connection failed.
    #[error("network error talking to the ACME CA: {0}")]
    Network(String),

    /// The CA's answer was not what RFC 8555 says it should be.
    #[error("unexpected answer from the ACME CA: {0}")]
    Protocol(String),

    /// The CA does not offer what was asked (no dns-01 challenge, no ARI, no profiles, …).
    #[error("the ACME CA does not support {0}")]
    Unsupported(String),

    /// The caller passed something unusable (a bad directory URL, an EAB key that is not
    /// base64url, an identifier list that is empty, …).
    #[error("invalid ACME request: {0}")]
    Invalid(String),

    /// Stored account credentials could not be read.
    #[error("the stored ACME account credentials are unusable: {0}")]
    Credentials(String),

    /// The order is not in a state where this step makes sense (e.g. finalize while
    /// authorizations are pending).
    #[error("order step {step} not possible: {reason}")]
    WrongStep {
        /// The step.
        step: &'static str,
        /// Why.
        reason: String,
    },

    /// Waiting for the CA (authorization validation, certificate issuance) took longer than the
    /// configured limit; the order may still complete: resume later.
    #[error("timed out waiting for the ACME CA: {0}")]
    Timeout(String),
}

impl AcmeError {
    /// The CA problem, if this is one.
    pub fn problem(&self) -> Option<&CaProblem> {
        match self {
            Self::Ca(p) => Some(p),
            _ => None,
        }
    }

    /// How long the CA asked to wait before trying again (rateLimited / 503), if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.problem().and_then(|p| p.retry_after)
    }

    /// Whether retrying later may succeed without any change (network trouble, timeouts,
    /// rate limits, CA-internal errors); `false` for definite refusals.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Network(_) | Self::Timeout(_) => true,
            Self::Ca(p) => {
                p.is("rateLimited")
                    || p.is("serverInternal")
                    || p.is("badNonce")
                    || p.status.is_some_and(|s| s >= 500)
            }
            _ => false,
        }
    }
}
