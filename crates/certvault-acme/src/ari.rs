//! ACME Renewal Information (RFC 9773).

use std::time::Duration;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::account::AcmeClient;
use crate::error::AcmeError;

/// Retry-After bounds for renewalInfo: never poll more often than this…
pub const ARI_MIN_RECHECK: Duration = Duration::from_secs(60);
/// …nor wait longer than this (RFC 9773 §4.3.2 lets clients clamp the server's value).
pub const ARI_MAX_RECHECK: Duration = Duration::from_secs(24 * 3600);
/// When the CA sends no Retry-After.
pub const ARI_DEFAULT_RECHECK: Duration = Duration::from_secs(6 * 3600);

/// The ARI certificate id: `base64url(AKI keyIdentifier) "." base64url(serial DER)`
/// (RFC 9773 §4.1), for `renewalInfo` and `replaces`.
pub fn ari_cert_id(cert_der: &[u8]) -> Result<String, AcmeError> {
    let der = CertificateDer::from(cert_der);
    let id = instant_acme::CertificateIdentifier::try_from(&der)
        .map_err(|e| AcmeError::Invalid(format!("ARI certificate id: {e}")))?;
    Ok(id.to_string())
}

/// The CA's suggestion for one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewalSchedule {
    /// Start of the suggested window.
    pub window_start: OffsetDateTime,
    /// End of the suggested window.
    pub window_end: OffsetDateTime,
    /// When to renew: a uniformly chosen time inside the window, or `now` when the window
    /// would be in the past (renew at once).
    pub renew_at: OffsetDateTime,
    /// When to ask again (the CA's `Retry-After`, clamped to
    /// [[`ARI_MIN_RECHECK`], [`ARI_MAX_RECHECK`]]; [`ARI_DEFAULT_RECHECK`] without one).
    pub recheck_after: Duration,
    /// The CA's explanation page, if any.
    pub explanation_url: Option<String>,
}

/// Picks the renewal time inside `[start, end]` at fraction `random` (0.0..1.0, uniform from
/// the caller's RNG); a window already ended renews `now`, and a time in the past becomes `now`.
pub fn choose_renewal_time(
    start: OffsetDateTime,
    end: OffsetDateTime,
    now: OffsetDateTime,
    random: f64,
) -> OffsetDateTime {
    if end <= now {
        return now;
    }
    if end <= start {
        return start.max(now);
    }
    let frac = if random.is_finite() {
        random.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let t = start + (end - start) * frac;
    t.max(now)
}

/// Clamps a Retry-After to the ARI bounds.
pub fn clamp_recheck(retry_after: Option<Duration>) -> Duration {
    retry_after
        .unwrap_or(ARI_DEFAULT_RECHECK)
        .clamp(ARI_MIN_RECHECK, ARI_MAX_RECHECK)
}

impl AcmeClient {
    /// Asks the CA's renewalInfo endpoint about `cert_der`. `None` when the directory offers no
    /// ARI (then renew by the lifetime rules, e.g. at 2/3 of the validity). `now` and `random`
    /// (0.0..1.0) choose the renewal time ([`choose_renewal_time`]).
    pub async fn renewal_info(
        &self,
        cert_der: &[u8],
        now: OffsetDateTime,
        random: f64,
    ) -> Result<Option<RenewalSchedule>, AcmeError> {
        let Some(base) = self.directory.renewal_info.clone() else {
            return Ok(None);
        };
        let id = ari_cert_id(cert_der)?;
        let url = format!("{}/{id}", base.trim_end_matches('/'));
        let (status, retry_after, body) = self.plain_get(&url).await?;
        if status != 200 {
            return Err(AcmeError::Protocol(format!(
                "renewalInfo answered HTTP {status}"
            )));
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Window {
            #[serde(with = "time::serde::rfc3339")]
            start: OffsetDateTime,
            #[serde(with = "time::serde::rfc3339")]
            end: OffsetDateTime,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Info {
            suggested_window: Window,
            #[serde(rename = "explanationURL")]
            explanation_url: Option<String>,
        }
        let info: Info = serde_json::from_slice(&body)
            .map_err(|e| AcmeError::Protocol(format!("renewalInfo is not ARI JSON: {e}")))?;
        let w = info.suggested_window;
        if w.end < w.start {
            return Err(AcmeError::Protocol(
                "renewalInfo window ends before it starts".into(),
            ));
        }
        Ok(Some(RenewalSchedule {
            renew_at: choose_renewal_time(w.start, w.end, now, random),
            window_start: w.start,
            window_end: w.end,
            recheck_after: clamp_recheck(retry_after),
            explanation_url: info.explanation_url,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn window_selection() {
        let s = datetime!(2026-01-10 00:00 UTC);
        let e = datetime!(2026-01-12 00:00 UTC);
        let before = datetime!(2026-01-01 00:00 UTC);
        assert_eq!(choose_renewal_time(s, e, before, 0.0), s);
        assert_eq!(choose_renewal_time(s, e, before, 1.0), e);
        assert_eq!(
            choose_renewal_time(s, e, before, 0.5),
            datetime!(2026-01-11 00:00 UTC)
        );
        // Inside the window: never before now.
        let inside = datetime!(2026-01-11 12:00 UTC);
        assert_eq!(choose_renewal_time(s, e, inside, 0.25), inside);
        assert_eq!(choose_renewal_time(s, e, inside, 0.9), s + (e - s) * 0.9);
        // Window over: renew now.
        let after = datetime!(2026-02-01 00:00 UTC);
        assert_eq!(choose_renewal_time(s, e, after, 0.7), after);
    }

    #[test]
    fn recheck_clamped() {
        assert_eq!(clamp_recheck(None), ARI_DEFAULT_RECHECK);
        assert_eq!(clamp_recheck(Some(Duration::from_secs(1))), ARI_MIN_RECHECK);
        assert_eq!(
            clamp_recheck(Some(Duration::from_secs(7 * 86400))),
            ARI_MAX_RECHECK
        );
        assert_eq!(
            clamp_recheck(Some(Duration::from_secs(3600))),
            Duration::from_secs(3600)
        );
    }
}
