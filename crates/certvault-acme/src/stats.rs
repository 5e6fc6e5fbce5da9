//! Process-wide counters of ACME requests by endpoint and result, read by the server's
//! `/metrics`. Lock-free: one atomic per (endpoint, result), fixed at compile time.

use std::sync::atomic::{AtomicU64, Ordering};

/// The endpoints (ACME calls) counted, as named in the `endpoint` label.
pub const ENDPOINTS: &[&str] = &[
    "newAccount",
    "loadAccount",
    "newOrder",
    "getOrder",
    "getAuthorizations",
    "respondChallenge",
    "pollAuthorizations",
    "finalize",
    "getCertificate",
    "getAlternateChain",
    "deactivateAuthorization",
    "GET",
    "other",
];

/// The results counted: the call answered, was retried (badNonce, rateLimited,
/// serverInternal, a transient network error), or failed after its retries.
pub const RESULTS: &[&str] = &["ok", "retry", "error"];

const N: usize = ENDPOINTS.len();

static COUNTS: [[AtomicU64; 3]; N] = [const { [const { AtomicU64::new(0) }; 3] }; N];

fn endpoint_index(what: &str) -> usize {
    ENDPOINTS.iter().position(|e| *e == what).unwrap_or(N - 1)
}

/// Counts one attempt of the call `what` with `result` (an index into [`RESULTS`]).
pub(crate) fn count(what: &str, result: usize) {
    if let Some(row) = COUNTS.get(endpoint_index(what))
        && let Some(c) = row.get(result)
    {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Result index: answered.
pub(crate) const OK: usize = 0;
/// Result index: retried.
pub(crate) const RETRY: usize = 1;
/// Result index: failed.
pub(crate) const ERROR: usize = 2;

/// Every (endpoint, result, count) counted so far in this process (zero counts included).
pub fn snapshot() -> Vec<(&'static str, &'static str, u64)> {
    let mut out = Vec::with_capacity(N * RESULTS.len());
    for (e, row) in ENDPOINTS.iter().zip(COUNTS.iter()) {
        for (r, c) in RESULTS.iter().zip(row.iter()) {
            out.push((*e, *r, c.load(Ordering::Relaxed)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_endpoint_and_result() {
        let get = |e: &str, r: &str| {
            snapshot()
                .into_iter()
                .find(|(a, b, _)| *a == e && *b == r)
                .map_or(0, |x| x.2)
        };
        let before = get("finalize", "retry");
        count("finalize", RETRY);
        count("finalize", RETRY);
        assert_eq!(get("finalize", "retry"), before + 2);
        let other = get("other", "error");
        count("somethingNew", ERROR);
        assert_eq!(get("other", "error"), other + 1);
    }
}
