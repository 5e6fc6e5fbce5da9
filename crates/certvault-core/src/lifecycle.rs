//! Lifecycle planning: given a certificate's policy, its current version and what was already
//! done for that version, what happens next and when. Pure functions (no I/O, no clock): the
//! server's engine reads the state, asks [`plan`], and does the item when it is due.
//!
//! Items of one version:
//!
//! - each lifetime action at its trigger (a percentage of the version's actual lifetime, from
//!   `nbf` to `exp`, or days before expiry): `AutoRenew` renews, spread by a jitter of up to an
//!   hour (at most 1 % of the lifetime) so that certificates made together do not renew
//!   together; `EmailContacts` sends an `about_to_expire` notice to the vault's contacts. An
//!   imported certificate never auto-renews (its AutoRenew acts as EmailContacts), and no
//!   renewal starts while an operation (a CSR waiting for its merge) is in progress;
//! - a failed renewal is retried after a capped exponential backoff while expiry is ahead
//!   (the failures are recorded as marks `retry:<n>:<next time>`);
//! - expiry notices `about_to_expire` at the configured offsets before expiry (default 30, 7
//!   and 1 days), skipping those that fall before the version was made or, when the version
//!   auto-renews, at or before the renewal (they are for certificates not renewed in time);
//! - `expired` at expiry.
//!
//! Each item is done once per version: doing it records a mark (`action:<i>`, `notice:<d>d`,
//! `expired`). When several notices are due at once (the server was down), only the latest
//! fires and the earlier ones are marked as passed.

use crate::policy::{ActionType, Policy};

/// Seconds per day.
pub const DAY: i64 = 86_400;

/// The default expiry notice offsets, in days before expiry.
pub const DEFAULT_NOTICE_DAYS: [u32; 3] = [30, 7, 1];

/// The longest renewal jitter, in seconds.
pub const MAX_JITTER: i64 = 3600;

/// Renewal retry backoff: the first retry after this many seconds, doubling each time.
pub const RETRY_BASE: i64 = 300;

/// Renewal retry backoff cap, in seconds.
pub const RETRY_CAP: i64 = 6 * 3600;

/// What the engine does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// Renew (lifetime action `index`).
    Renew {
        /// The lifetime action.
        index: usize,
        /// Failed attempts so far.
        attempt: u32,
    },
    /// Mail the contacts (lifetime action `index`, EmailContacts).
    Email {
        /// The lifetime action.
        index: usize,
    },
    /// `about_to_expire` `days` before expiry.
    Notice {
        /// Days before expiry.
        days: u32,
    },
    /// `expired`.
    Expired,
}

impl Item {
    /// The mark recorded when the item is done (renewals leave a new version instead).
    pub fn mark(&self) -> Option<String> {
        match self {
            Self::Renew { .. } => None,
            Self::Email { index } => Some(format!("action:{index}")),
            Self::Notice { days } => Some(format!("notice:{days}d")),
            Self::Expired => Some("expired".into()),
        }
    }

    /// A short name for logs and payloads.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Renew { .. } => "renew",
            Self::Email { .. } => "email_contacts",
            Self::Notice { .. } => "expiry_notice",
            Self::Expired => "expired",
        }
    }
}

/// A certificate's current version as the planner sees it.
#[derive(Debug, Clone)]
pub struct VersionFacts<'a> {
    /// Not before (falls back to `created`).
    pub nbf: Option<i64>,
    /// Expiry; without one nothing is planned.
    pub exp: Option<i64>,
    /// Creation time of the version.
    pub created: i64,
    /// certvault made it (created or ordered); false for an import or a restore.
    pub made: bool,
    /// A certificate operation is in progress.
    pub op_in_progress: bool,
    /// Marks recorded for the version.
    pub marks: &'a [String],
    /// A stable per-version value for the jitter (e.g. a hash of the version id).
    pub seed: u64,
    /// The renewal time the CA suggested (ACME Renewal Information, RFC 9773): when set, it
    /// replaces the AutoRenew actions' triggers (no jitter: the CA's window is already spread).
    pub renew_at: Option<i64>,
}

/// The next item and when it is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// When.
    pub at: i64,
    /// What.
    pub item: Item,
    /// Earlier notices passed over by this one, to mark as done with it.
    pub also_mark: Vec<String>,
}

/// When a lifetime action triggers for a version living from `nbf` to `exp`.
pub fn trigger_time(trigger: &crate::policy::Trigger, nbf: i64, exp: i64) -> Option<i64> {
    if let Some(p) = trigger.lifetime_percentage {
        let life = (exp - nbf).max(0);
        let p = i64::from(p.min(100));
        return Some(nbf + life.saturating_mul(p) / 100);
    }
    trigger
        .days_before_expiry
        .map(|d| exp - i64::from(d).saturating_mul(DAY))
}

/// The renewal jitter for a version: `seed` spread over at most an hour and 1 % of the lifetime.
pub fn jitter(seed: u64, lifetime: i64) -> i64 {
    let span = MAX_JITTER.min(lifetime.max(0) / 100);
    if span <= 0 {
        return 0;
    }
    i64::try_from(seed % u64::try_from(span).unwrap_or(1)).unwrap_or(0)
}

/// Seconds to wait after the `attempt`-th failure (1-based): `RETRY_BASE · 2^(attempt-1)`,
/// capped at `RETRY_CAP`.
pub fn retry_backoff(attempt: u32) -> i64 {
    let shift = attempt.saturating_sub(1).min(30);
    RETRY_BASE.saturating_mul(1i64 << shift).min(RETRY_CAP)
}

/// A stable 64-bit hash (FNV-1a) for jitter seeds.
pub fn seed_of(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The failed renewal attempts recorded in `marks` and when the next may start.
pub fn retries(marks: &[String]) -> (u32, Option<i64>) {
    let mut best: (u32, Option<i64>) = (0, None);
    for m in marks {
        let mut it = m.split(':');
        if it.next() != Some("retry") {
            continue;
        }
        let n = it.next().and_then(|x| x.parse::<u32>().ok());
        let at = it.next().and_then(|x| x.parse::<i64>().ok());
        if let (Some(n), Some(at)) = (n, at)
            && n > best.0
        {
            best = (n, Some(at));
        }
    }
    best
}

/// The mark recording the `attempt`-th failed renewal, retried at `next`.
pub fn retry_mark(attempt: u32, next: i64) -> String {
    format!("retry:{attempt}:{next}")
}

/// A renewal trigger at or before the version's creation (the CA issued a shorter lifetime than
/// the policy's trigger assumes, e.g. "30 days before expiry" for a 6-day certificate, or the
/// clock moved) would renew the new version at once, and again, without end. Such a version
/// is renewed after two thirds of the life it had left when it was made.
pub fn born_due(trigger: i64, created: i64, exp: i64) -> i64 {
    if trigger <= created && created < exp {
        created + (exp - created) * 2 / 3
    } else {
        trigger
    }
}

/// When the version is planned to be renewed: its earliest AutoRenew lifetime action (with the
/// version's jitter), or the retry after failed attempts, whichever is later, as [`plan`]
/// schedules it. `None` for a version certvault did not make (imported, restored), without an
/// expiry, or whose policy has no AutoRenew action.
pub fn renewal_time(policy: &Policy, v: &VersionFacts<'_>) -> Option<i64> {
    if !v.made {
        return None;
    }
    let exp = v.exp?;
    let nbf = v.nbf.unwrap_or(v.created).min(exp);
    let (_, retry_at) = retries(v.marks);
    policy
        .lifetime_actions
        .iter()
        .filter(|la| la.action.action_type == ActionType::AutoRenew)
        .filter_map(|la| trigger_time(&la.trigger, nbf, exp))
        .map(|t| {
            // as `plan` schedules it: the ARI window's point when the CA suggested one
            let (t, spread) = match v.renew_at {
                Some(ari) => (ari, 0),
                None => (born_due(t, v.created, exp), jitter(v.seed, exp - nbf)),
            };
            (t + spread).max(retry_at.unwrap_or(i64::MIN))
        })
        .min()
}

/// The next item for a version, or `None` when nothing is left to do for it.
pub fn plan(
    policy: &Policy,
    v: &VersionFacts<'_>,
    notice_days: &[u32],
    now: i64,
) -> Option<Planned> {
    let exp = v.exp?;
    let nbf = v.nbf.unwrap_or(v.created).min(exp);
    let done = |m: &str| v.marks.iter().any(|x| x == m);
    let mut items: Vec<(i64, Item)> = Vec::new();
    let mut renew_at: Option<i64> = None;
    for (index, la) in policy.lifetime_actions.iter().enumerate() {
        let Some(t) = trigger_time(&la.trigger, nbf, exp) else {
            continue;
        };
        match la.action.action_type {
            ActionType::AutoRenew if v.made => {
                let (attempt, retry_at) = retries(v.marks);
                let (t, spread) = match v.renew_at {
                    Some(ari) => (ari, 0),
                    None => (born_due(t, v.created, exp), jitter(v.seed, exp - nbf)),
                };
                let at = (t + spread).max(retry_at.unwrap_or(i64::MIN));
                renew_at = Some(renew_at.map_or(t, |r: i64| r.min(t)));
                if !v.op_in_progress && at < exp {
                    items.push((at, Item::Renew { index, attempt }));
                }
            }
            _ => {
                if !done(&format!("action:{index}")) {
                    items.push((t, Item::Email { index }));
                }
            }
        }
    }
    let mut notices: Vec<(i64, Item)> = Vec::new();
    for &d in notice_days {
        let t = exp - i64::from(d).saturating_mul(DAY);
        if t < v.created || renew_at.is_some_and(|r| t <= r) {
            continue;
        }
        notices.push((t, Item::Notice { days: d }));
    }
    notices.push((exp, Item::Expired));
    notices.retain(|(_, it)| it.mark().is_some_and(|m| !done(&m)));
    notices.sort_by_key(|(t, _)| *t);
    // Of the notices already due, only the latest fires; it passes over the others.
    let due: Vec<&(i64, Item)> = notices.iter().filter(|(t, _)| *t <= now).collect();
    let mut also_mark = Vec::new();
    if let Some(last) = due.last() {
        for (_, it) in &due[..due.len() - 1] {
            if let Some(m) = it.mark() {
                also_mark.push(m);
            }
        }
        items.push(**last);
    } else if let Some(first) = notices.first() {
        items.push(*first);
    }
    let (at, item) = items.into_iter().min_by_key(|(t, _)| *t)?;
    if !matches!(item, Item::Notice { .. } | Item::Expired) {
        also_mark.clear();
    }
    Some(Planned {
        at,
        item,
        also_mark,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::policy::{Origin, PolicyIn};

    fn policy(json: &str, origin: Origin) -> Policy {
        let p: PolicyIn = serde_json::from_str(json).unwrap();
        Policy::resolve(&p, origin, origin == Origin::Created).unwrap()
    }

    fn self_policy() -> Policy {
        policy(
            r#"{"x509_props":{"subject":"CN=a"},"issuer":{"name":"Self"}}"#,
            Origin::Created,
        )
    }

    fn facts(marks: &[String]) -> VersionFacts<'_> {
        VersionFacts {
            nbf: Some(0),
            exp: Some(100 * DAY),
            created: 0,
            made: true,
            op_in_progress: false,
            marks,
            seed: 7,
            renew_at: None,
        }
    }

    #[test]
    fn a_version_due_at_birth_renews_after_two_thirds_of_its_remaining_life() {
        let p = self_policy();
        // Made at 90 % of its lifetime (e.g. the CA issued it shorter than the policy assumes).
        let mut f = facts(&[]);
        f.created = 90 * DAY;
        let got = plan(&p, &f, &[], 90 * DAY).unwrap();
        assert!(matches!(got.item, Item::Renew { .. }), "{got:?}");
        let base = 90 * DAY + 10 * DAY * 2 / 3;
        assert!(got.at >= base && got.at <= base + MAX_JITTER, "{got:?}");
        assert_eq!(born_due(5, 10, 100), 70);
        assert_eq!(born_due(50, 10, 100), 50);
    }

    #[test]
    fn the_ca_suggested_time_replaces_the_autorenew_trigger() {
        let p = self_policy();
        let mut f = facts(&[]);
        f.renew_at = Some(10 * DAY);
        let got = plan(&p, &f, &DEFAULT_NOTICE_DAYS, 0).unwrap();
        assert_eq!(got.at, 10 * DAY);
        assert!(matches!(got.item, Item::Renew { .. }));
        f.renew_at = Some(99 * DAY);
        let got = plan(&p, &f, &DEFAULT_NOTICE_DAYS, 0).unwrap();
        assert_eq!(got.at, 99 * DAY, "{got:?}");
    }

    #[test]
    fn autorenew_at_80_percent_of_the_actual_lifetime_with_jitter() {
        let p = self_policy();
        let got = plan(&p, &facts(&[]), &DEFAULT_NOTICE_DAYS, 0).unwrap();
        assert_eq!(
            got.item,
            Item::Renew {
                index: 0,
                attempt: 0
            }
        );
        assert_eq!(got.at, 80 * DAY + 7);
        // A version with another lifetime gets its own 80 %.
        let mut f = facts(&[]);
        f.nbf = Some(1000);
        f.exp = Some(1000 + 10 * DAY);
        assert_eq!(
            plan(&p, &f, &DEFAULT_NOTICE_DAYS, 0).unwrap().at,
            1000 + 8 * DAY + 7
        );
    }

    #[test]
    fn renewal_time_is_when_plan_renews() {
        let p = self_policy();
        assert_eq!(renewal_time(&p, &facts(&[])), Some(80 * DAY + 7));
        let marks = vec![retry_mark(2, 85 * DAY)];
        assert_eq!(renewal_time(&p, &facts(&marks)), Some(85 * DAY));
        let mut imported = facts(&[]);
        imported.made = false;
        assert_eq!(renewal_time(&p, &imported), None);
        let mut no_exp = facts(&[]);
        no_exp.exp = None;
        assert_eq!(renewal_time(&p, &no_exp), None);
    }

    #[test]
    fn jitter_is_bounded_by_an_hour_and_one_percent() {
        assert!(jitter(u64::MAX, 365 * DAY) < MAX_JITTER);
        assert!(jitter(u64::MAX, 1000) < 10);
        assert_eq!(jitter(5, 50), 0);
        let spread: std::collections::HashSet<i64> = (0..100)
            .map(|i| jitter(seed_of(&format!("v{i}")), 365 * DAY))
            .collect();
        assert!(spread.len() > 50);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(retry_backoff(1), 300);
        assert_eq!(retry_backoff(2), 600);
        assert_eq!(retry_backoff(3), 1200);
        assert_eq!(retry_backoff(10), RETRY_CAP);
        assert_eq!(retry_backoff(u32::MAX), RETRY_CAP);
    }

    #[test]
    fn failed_renewals_retry_later_and_stop_at_expiry() {
        let p = self_policy();
        let marks = vec![retry_mark(1, 85 * DAY), "retry:x".into()];
        let got = plan(&p, &facts(&marks), &DEFAULT_NOTICE_DAYS, 80 * DAY).unwrap();
        assert_eq!(
            got,
            Planned {
                at: 85 * DAY,
                item: Item::Renew {
                    index: 0,
                    attempt: 1
                },
                also_mark: vec![]
            }
        );
        // No retry at or after expiry: only the notices are left.
        let marks = vec![retry_mark(7, 100 * DAY)];
        let got = plan(&p, &facts(&marks), &DEFAULT_NOTICE_DAYS, 95 * DAY).unwrap();
        assert_eq!(got.item, Item::Notice { days: 7 });
    }

    #[test]
    fn imported_certificates_never_renew() {
        let mut p = self_policy();
        let marks = ["notice:30d".to_owned()];
        let mut f = facts(&marks);
        f.made = false;
        let got = plan(&p, &f, &DEFAULT_NOTICE_DAYS, 0).unwrap();
        assert_eq!(got.item, Item::Email { index: 0 });
        assert_eq!(got.at, 80 * DAY);
        // Import defaults: EmailContacts at 80 %.
        p = policy(r#"{"x509_props":{"subject":"CN=a"}}"#, Origin::Imported);
        assert_eq!(
            p.lifetime_actions[0].action.action_type,
            ActionType::EmailContacts
        );
    }

    #[test]
    fn no_renewal_while_an_operation_is_in_progress() {
        let p = self_policy();
        let mut f = facts(&[]);
        f.op_in_progress = true;
        // Notices at or before the renewal point are skipped for auto-renewing versions.
        let got = plan(&p, &f, &DEFAULT_NOTICE_DAYS, 0).unwrap();
        assert_eq!(got.item, Item::Notice { days: 7 });
    }

    #[test]
    fn expiry_notices_fire_once_each_and_late_ones_pass_over_earlier_ones() {
        let p = policy(
            r#"{"x509_props":{"subject":"CN=a"},"issuer":{"name":"Unknown"},"lifetime_actions":[{"trigger":{"days_before_expiry":40},"action":{"action_type":"EmailContacts"}}]}"#,
            Origin::Created,
        );
        let f = facts(&[]);
        let got = plan(&p, &f, &DEFAULT_NOTICE_DAYS, 0).unwrap();
        assert_eq!((got.at, got.item), (60 * DAY, Item::Email { index: 0 }));
        let marks = vec!["action:0".to_owned()];
        let got = plan(&p, &facts(&marks), &DEFAULT_NOTICE_DAYS, 0).unwrap();
        assert_eq!((got.at, got.item), (70 * DAY, Item::Notice { days: 30 }));
        let marks = vec!["action:0".to_owned(), "notice:30d".into()];
        let got = plan(&p, &facts(&marks), &DEFAULT_NOTICE_DAYS, 0).unwrap();
        assert_eq!(got.item, Item::Notice { days: 7 });
        // The server was down past expiry: one `expired`, the others marked as passed.
        let got = plan(&p, &facts(&marks), &DEFAULT_NOTICE_DAYS, 101 * DAY).unwrap();
        assert_eq!(got.item, Item::Expired);
        assert_eq!(got.also_mark, vec!["notice:7d", "notice:1d"]);
        let all = vec![
            "action:0".to_owned(),
            "notice:30d".into(),
            "notice:7d".into(),
            "notice:1d".into(),
            "expired".into(),
        ];
        assert!(plan(&p, &facts(&all), &DEFAULT_NOTICE_DAYS, 101 * DAY).is_none());
    }

    #[test]
    fn notices_before_the_version_was_made_are_skipped() {
        let p = policy(
            r#"{"x509_props":{"subject":"CN=a"},"issuer":{"name":"Unknown"}}"#,
            Origin::Created,
        );
        let marks = ["action:0".to_owned()];
        let mut f = facts(&marks);
        f.exp = Some(10 * DAY);
        let got = plan(&p, &f, &DEFAULT_NOTICE_DAYS, 0).unwrap();
        assert_eq!(got.item, Item::Notice { days: 7 });
    }
}
