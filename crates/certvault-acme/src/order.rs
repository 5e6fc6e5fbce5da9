//! The order driver: a resumable state machine over a serialisable [`OrderState`].
//!
//! Every step reads the CA's current state before acting, so running a step again after a crash
//! (the caller persisted the state before the step, not after) does no harm: an order is never
//! created twice for a state that has an `order_url`, a challenge is answered only while it is
//! `pending`, finalize is sent only while the order is `ready`.

use std::future::Future;
use std::time::{Duration, Instant};

use instant_acme::{
    AuthorizationStatus, ChallengeStatus, ChallengeType, Identifier, NewOrder, Order,
    OrderStatus as IaOrderStatus,
};
use serde::{Deserialize, Serialize};

use crate::account::AcmeClient;
use crate::error::{AcmeError, CaProblem};
use crate::http::{acme_call, with_captured};

/// How fast and how long the driver polls the CA.
#[derive(Clone, Debug)]
pub struct Timing {
    /// The first poll interval when the CA sends no `Retry-After`.
    pub poll_initial: Duration,
    /// The longest poll interval (the interval doubles up to this).
    pub poll_max: Duration,
    /// How long to wait for authorizations to leave `pending`, and for the certificate.
    pub poll_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            poll_initial: Duration::from_millis(100),
            poll_max: Duration::from_secs(5),
            poll_timeout: Duration::from_secs(120),
        }
    }
}

/// What to order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequest {
    /// DNS names, e.g. `["example.com", "*.example.com"]`.
    pub identifiers: Vec<String>,
    /// The ARI certificate id of the certificate this order replaces (RFC 9773 `replaces`;
    /// see [`crate::ari_cert_id`]). Only sent when the CA offers ARI.
    pub replaces: Option<String>,
    /// A certificate profile the CA offers (draft-ietf-acme-profiles).
    pub profile: Option<String>,
}

/// The order's status as last seen at the CA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OrderStatus {
    /// Not created at the CA yet.
    #[default]
    New,
    /// Authorizations to complete.
    Pending,
    /// All authorizations valid: finalize.
    Ready,
    /// CSR accepted, certificate being issued.
    Processing,
    /// Certificate issued.
    Valid,
    /// Failed at the CA (terminal: make a new order).
    Invalid,
    /// Cancelled by us (authorizations deactivated).
    Cancelled,
}

/// An authorization's status as last seen at the CA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthzStatus {
    /// Not fetched yet.
    #[default]
    Unknown,
    /// Waiting for the challenge.
    Pending,
    /// Validated (possibly reused from an earlier order).
    Valid,
    /// Validation failed.
    Invalid,
    /// Deactivated.
    Deactivated,
    /// Expired.
    Expired,
    /// Revoked.
    Revoked,
}

impl From<AuthorizationStatus> for AuthzStatus {
    fn from(s: AuthorizationStatus) -> Self {
        match s {
            AuthorizationStatus::Pending => Self::Pending,
            AuthorizationStatus::Valid => Self::Valid,
            AuthorizationStatus::Invalid => Self::Invalid,
            AuthorizationStatus::Revoked => Self::Revoked,
            AuthorizationStatus::Expired => Self::Expired,
            AuthorizationStatus::Deactivated => Self::Deactivated,
        }
    }
}

/// One authorization of the order and its DNS-01 challenge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzState {
    /// The authorization URL.
    pub url: String,
    /// The identifier as ordered: `example.com` or `*.example.com` (empty until fetched).
    pub identifier: String,
    /// Last seen status.
    pub status: AuthzStatus,
    /// The dns-01 challenge URL (`None` until fetched, or when the authorization was already
    /// valid).
    pub challenge_url: Option<String>,
    /// The TXT record name: `_acme-challenge.<domain>` (the same for `x` and `*.x`).
    pub txt_name: String,
    /// The TXT value: base64url(SHA-256(key authorization)).
    pub txt_value: String,
    /// The caller published the record (rfc2136 done, or the propagation check passed / the
    /// user acknowledged). Set with [`OrderState::mark_published`].
    pub published: bool,
    /// We told the CA the challenge is ready.
    pub ready_sent: bool,
}

impl AuthzState {
    /// The authorization is validated.
    pub fn validated(&self) -> bool {
        self.status == AuthzStatus::Valid
    }
}

/// A TXT record to publish (or remove).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxtRecord {
    /// The identifier it proves (`example.com` or `*.example.com`).
    pub identifier: String,
    /// `_acme-challenge.example.com`, without trailing dot.
    pub name: String,
    /// The value.
    pub value: String,
}

/// The whole order, as the caller persists it after every step (JSON through serde).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    /// Format version of this structure.
    pub version: u32,
    /// What was asked.
    pub request: OrderRequest,
    /// The order URL: the only handle on the order at the CA. Present ⇒ never order again.
    pub order_url: Option<String>,
    /// Last seen status.
    pub status: OrderStatus,
    /// One per identifier (after [`AcmeClient::new_order`] the URLs; after
    /// [`AcmeClient::fetch_challenges`] the challenges).
    pub authorizations: Vec<AuthzState>,
    /// The CSR was accepted by the CA.
    pub finalized: bool,
    /// The certificate URL once issued.
    pub certificate_url: Option<String>,
    /// The CA's problem when the order or an authorization failed.
    pub error: Option<CaProblem>,
    /// Records the user publishes (notify mode): the end of the window for them to appear
    /// (Unix seconds of the caller's clock), fixed when the user is first told, so that a
    /// resumed order keeps the window it had.
    #[serde(default)]
    pub validation_deadline: Option<i64>,
    /// Records the user was already told about (`"<name> <value>"`), so that a resumed order
    /// does not tell again.
    #[serde(default)]
    pub notified: Vec<String>,
}

/// The next thing to do for an order (see [`OrderState::next_step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// [`AcmeClient::new_order`].
    CreateOrder,
    /// [`AcmeClient::fetch_challenges`].
    FetchChallenges,
    /// The caller publishes [`OrderState::to_publish`] and calls
    /// [`OrderState::mark_published`] for each (rfc2136: after the update; notify: after the
    /// authoritative check passed or the user acknowledged).
    Publish,
    /// [`AcmeClient::submit_challenges`].
    SubmitChallenges,
    /// [`AcmeClient::poll_authorizations`].
    PollAuthorizations,
    /// [`AcmeClient::finalize`] with the CSR.
    Finalize,
    /// [`AcmeClient::download`].
    Download,
    /// The order is `invalid` or cancelled: remove [`OrderState::published_records`] and stop.
    Failed,
}

impl OrderState {
    /// A state for `request`, before anything is sent.
    pub fn new(request: OrderRequest) -> Self {
        Self {
            version: 1,
            request,
            ..Self::default()
        }
    }

    /// Where to continue.
    pub fn next_step(&self) -> Step {
        if self.order_url.is_none() {
            return Step::CreateOrder;
        }
        match self.status {
            OrderStatus::Invalid | OrderStatus::Cancelled => return Step::Failed,
            OrderStatus::Valid | OrderStatus::Processing => return Step::Download,
            OrderStatus::Ready => return Step::Finalize,
            OrderStatus::New | OrderStatus::Pending => {}
        }
        if self.finalized {
            return Step::Download;
        }
        if self.authorizations.is_empty()
            || self
                .authorizations
                .iter()
                .any(|a| a.status == AuthzStatus::Unknown)
        {
            return Step::FetchChallenges;
        }
        if self
            .authorizations
            .iter()
            .any(|a| !matches!(a.status, AuthzStatus::Pending | AuthzStatus::Valid))
        {
            return Step::Failed;
        }
        let pending = || {
            self.authorizations
                .iter()
                .filter(|a| a.status == AuthzStatus::Pending)
        };
        if pending().any(|a| !a.published) {
            return Step::Publish;
        }
        if pending().any(|a| !a.ready_sent) {
            return Step::SubmitChallenges;
        }
        if pending().next().is_some() {
            return Step::PollAuthorizations;
        }
        Step::Finalize
    }

    /// The TXT records still to publish (pending authorizations not marked published).
    pub fn to_publish(&self) -> Vec<TxtRecord> {
        self.authorizations
            .iter()
            .filter(|a| a.status == AuthzStatus::Pending && !a.published && !a.txt_value.is_empty())
            .map(record_of)
            .collect()
    }

    /// Every record marked published (to remove when the order is done, failed or cancelled).
    pub fn published_records(&self) -> Vec<TxtRecord> {
        self.authorizations
            .iter()
            .filter(|a| a.published)
            .map(record_of)
            .collect()
    }

    /// Marks the authorization(s) whose record is `name`/`value` as published.
    pub fn mark_published(&mut self, record: &TxtRecord) {
        for a in &mut self.authorizations {
            if a.txt_name == record.name && a.txt_value == record.value {
                a.published = true;
            }
        }
    }

    /// All authorizations validated.
    pub fn all_validated(&self) -> bool {
        !self.authorizations.is_empty() && self.authorizations.iter().all(AuthzState::validated)
    }

    fn order_url(&self, step: &'static str) -> Result<String, AcmeError> {
        self.order_url.clone().ok_or(AcmeError::WrongStep {
            step,
            reason: "the order has not been created".into(),
        })
    }
}

fn record_of(a: &AuthzState) -> TxtRecord {
    TxtRecord {
        identifier: a.identifier.clone(),
        name: a.txt_name.clone(),
        value: a.txt_value.clone(),
    }
}

fn order_status(s: IaOrderStatus) -> OrderStatus {
    match s {
        IaOrderStatus::Pending => OrderStatus::Pending,
        IaOrderStatus::Ready => OrderStatus::Ready,
        IaOrderStatus::Processing => OrderStatus::Processing,
        IaOrderStatus::Valid => OrderStatus::Valid,
        IaOrderStatus::Invalid => OrderStatus::Invalid,
    }
}

/// The DNS name in an identifier (`*.x` → `x`), lower-case, no trailing dot.
fn base_domain(identifier: &str) -> String {
    identifier
        .trim_start_matches("*.")
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// A plain copy of one authorization as fetched.
struct AuthzInfo {
    url: String,
    identifier: String,
    status: AuthzStatus,
    challenge: Option<(
        String,
        ChallengeStatus,
        Option<instant_acme::Problem>,
        String,
    )>,
}

/// Publishes and removes TXT records for [`AcmeClient::run_order`].
pub trait TxtPublisher {
    /// Makes `record` visible to the CA (and returns when it is).
    fn publish(&self, record: &TxtRecord) -> impl Future<Output = Result<(), String>> + Send;
    /// Removes `record` (only this value; other values of the name stay).
    fn unpublish(&self, record: &TxtRecord) -> impl Future<Output = Result<(), String>> + Send;
}

/// The issued certificate chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateChain {
    /// The PEM chain as served: leaf first, then intermediates.
    pub pem: String,
    /// The same as DER, leaf first.
    pub der: Vec<Vec<u8>>,
    /// The issuer name (RFC 4514 string) of the chain's last certificate: which root it chains
    /// to.
    pub top_issuer: String,
}

impl CertificateChain {
    pub(crate) fn from_pem(pem: String) -> Result<Self, AcmeError> {
        use rustls_pki_types::pem::PemObject;
        let der: Vec<Vec<u8>> = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| c.map(|c| c.as_ref().to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| AcmeError::Protocol(format!("certificate chain PEM: {e}")))?;
        let last = der
            .last()
            .ok_or_else(|| AcmeError::Protocol("the certificate chain is empty".into()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(last)
            .map_err(|e| AcmeError::Protocol(format!("certificate in chain: {e}")))?;
        let top_issuer = cert.issuer().to_string();
        Ok(Self {
            pem,
            der,
            top_issuer,
        })
    }
}

impl AcmeClient {
    async fn load_order(&self, url: &str) -> Result<Order, AcmeError> {
        let (r, _) = acme_call!(
            &self.retry,
            "getOrder",
            true,
            false,
            self.account.order(url.to_owned())
        );
        r
    }

    fn sync_order(st: &mut OrderState, order: &mut Order) {
        let s = order.state();
        st.status = order_status(s.status);
        if let (OrderStatus::Invalid, Some(p)) = (st.status, &s.error) {
            st.error = Some(CaProblem::from_instant(p, None));
        }
        if let Some(c) = &s.certificate {
            st.certificate_url = Some(c.clone());
        }
        if matches!(st.status, OrderStatus::Processing | OrderStatus::Valid) {
            st.finalized = true;
        }
    }

    /// Step 1: creates the order at the CA. Persist the state right after: it holds the order
    /// URL. Calling it on a state that already has an order URL is an error (no duplicates).
    pub async fn new_order(&self, st: &mut OrderState) -> Result<(), AcmeError> {
        if st.order_url.is_some() {
            return Err(AcmeError::WrongStep {
                step: "new_order",
                reason: "the order already exists at the CA; resume it instead".into(),
            });
        }
        if st.request.identifiers.is_empty() {
            return Err(AcmeError::Invalid(
                "an order needs at least one DNS name".into(),
            ));
        }
        let ids: Vec<Identifier> = st
            .request
            .identifiers
            .iter()
            .map(|i| Identifier::Dns(i.trim_end_matches('.').to_ascii_lowercase()))
            .collect();
        let replaces = match &st.request.replaces {
            Some(r) => {
                let bad =
                    || AcmeError::Invalid(format!("replaces {r:?} is not an ARI certificate id"));
                let (aki, serial) = r.split_once('.').ok_or_else(bad)?;
                if aki.is_empty() || serial.is_empty() || serial.contains('.') {
                    return Err(bad());
                }
                Some(instant_acme::CertificateIdentifier {
                    authority_key_identifier: aki.to_owned().into(),
                    serial: serial.to_owned().into(),
                })
            }
            None => None,
        };
        let (r, _) = acme_call!(&self.retry, "newOrder", true, false, async {
            let mut n = NewOrder::new(&ids);
            if let Some(r) = &replaces {
                n = n.replaces(r.clone());
            }
            if let Some(p) = &st.request.profile {
                n = n.profile(p);
            }
            self.account.new_order(&n).await
        });
        let mut order = r?;
        st.order_url = Some(order.url().to_owned());
        Self::sync_order(st, &mut order);
        let (_, state) = order.into_parts();
        st.authorizations = state
            .authorizations
            .iter()
            .map(|a| AuthzState {
                url: a.url.clone(),
                identifier: String::new(),
                status: AuthzStatus::Unknown,
                challenge_url: None,
                txt_name: String::new(),
                txt_value: String::new(),
                published: false,
                ready_sent: false,
            })
            .collect();
        tracing::info!(order = ?st.order_url, names = ?st.request.identifiers, "ACME order created");
        Ok(())
    }

    /// Fetches every authorization (all states, plain data). Restarts the authorization stream
    /// after a retryable error; authorizations already fetched are not fetched again.
    async fn fetch_authzs(&self, order: &mut Order) -> Result<Vec<AuthzInfo>, AcmeError> {
        let thumb_order = order;
        let (r, _) = acme_call!(&self.retry, "getAuthorizations", true, false, async {
            let mut out = Vec::new();
            let mut stream = thumb_order.authorizations();
            while let Some(h) = stream.next().await {
                let mut h = h?;
                let url = h.url().to_owned();
                let identifier = h.identifier().to_string();
                let status = AuthzStatus::from(h.status);
                let challenge = h.challenge(ChallengeType::Dns01).map(|c| {
                    (
                        c.url.clone(),
                        c.status,
                        c.error.clone(),
                        c.key_authorization().dns_value(),
                    )
                });
                out.push(AuthzInfo {
                    url,
                    identifier,
                    status,
                    challenge,
                });
            }
            Ok::<_, instant_acme::Error>(out)
        });
        r
    }

    /// Step 2: reads the order and its authorizations, and the DNS-01 challenge of each pending
    /// one (TXT name and value). Authorizations already valid (reused) need nothing.
    pub async fn fetch_challenges(&self, st: &mut OrderState) -> Result<(), AcmeError> {
        let url = st.order_url("fetch_challenges")?;
        let mut order = self.load_order(&url).await?;
        Self::sync_order(st, &mut order);
        let infos = self.fetch_authzs(&mut order).await?;
        let mut out = Vec::with_capacity(infos.len());
        for info in infos {
            let old = st.authorizations.iter().find(|a| a.url == info.url);
            let mut a = AuthzState {
                url: info.url.clone(),
                identifier: info.identifier.clone(),
                status: info.status,
                challenge_url: None,
                txt_name: format!("_acme-challenge.{}", base_domain(&info.identifier)),
                txt_value: String::new(),
                published: old.is_some_and(|o| o.published),
                ready_sent: old.is_some_and(|o| o.ready_sent),
            };
            if let Some((curl, cstatus, _, value)) = &info.challenge {
                a.challenge_url = Some(curl.clone());
                a.txt_value = value.clone();
                if *cstatus != ChallengeStatus::Pending {
                    a.ready_sent = true;
                }
            } else if info.status == AuthzStatus::Pending {
                return Err(AcmeError::Unsupported(format!(
                    "dns-01 for {} (the CA offers no dns-01 challenge)",
                    info.identifier
                )));
            }
            out.push(a);
        }
        st.authorizations = out;
        Ok(())
    }

    /// Step 4: tells the CA that each published, pending challenge is ready. A challenge that
    /// the CA already left `pending` (answered before a crash) is not answered again.
    pub async fn submit_challenges(&self, st: &mut OrderState) -> Result<(), AcmeError> {
        let url = st.order_url("submit_challenges")?;
        let mut order = self.load_order(&url).await?;
        let infos = self.fetch_authzs(&mut order).await?;
        for info in &infos {
            let Some(a) = st.authorizations.iter_mut().find(|a| a.url == info.url) else {
                continue;
            };
            a.status = info.status;
            let Some((_, cstatus, _, _)) = &info.challenge else {
                continue;
            };
            if info.status != AuthzStatus::Pending || !a.published {
                continue;
            }
            if *cstatus != ChallengeStatus::Pending {
                a.ready_sent = true;
                continue;
            }
            let authz_url = info.url.clone();
            let (r, _) = acme_call!(&self.retry, "respondChallenge", true, false, async {
                let mut stream = order.authorizations();
                while let Some(h) = stream.next().await {
                    let mut h = h?;
                    if h.url() != authz_url {
                        continue;
                    }
                    if let Some(mut c) = h.challenge(ChallengeType::Dns01) {
                        return c.set_ready().await;
                    }
                }
                Err(instant_acme::Error::Str(
                    "authorization disappeared from the order",
                ))
            });
            match r {
                Ok(()) => a.ready_sent = true,
                // Answered twice (e.g. a retry after a lost response): the CA has it.
                Err(AcmeError::Ca(p)) if p.is("malformed") && a.ready_sent => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Step 5: polls the pending authorizations until none is pending (or the polling timeout;
    /// then [`AcmeError::Timeout`], and polling may resume later). An invalid authorization
    /// makes the order fail with the CA's problem ([`AcmeError::Ca`]).
    pub async fn poll_authorizations(&self, st: &mut OrderState) -> Result<(), AcmeError> {
        let url = st.order_url("poll_authorizations")?;
        let deadline = Instant::now() + self.timing.poll_timeout;
        let mut delay = self.timing.poll_initial;
        loop {
            let mut order = self.load_order(&url).await?;
            Self::sync_order(st, &mut order);
            let (infos, retry_after) = {
                let (r, cap) = acme_call!(&self.retry, "pollAuthorizations", true, false, async {
                    let mut out = Vec::new();
                    let mut stream = order.authorizations();
                    while let Some(h) = stream.next().await {
                        let mut h = h?;
                        if h.status == AuthorizationStatus::Pending {
                            h.refresh().await?;
                        }
                        let url = h.url().to_owned();
                        let identifier = h.identifier().to_string();
                        let status = AuthzStatus::from(h.status);
                        let challenge = h
                            .challenge(ChallengeType::Dns01)
                            .map(|c| (c.url.clone(), c.status, c.error.clone(), String::new()));
                        out.push(AuthzInfo {
                            url,
                            identifier,
                            status,
                            challenge,
                        });
                    }
                    Ok::<_, instant_acme::Error>(out)
                });
                (r?, with_captured(&cap, |g| g.retry_after).flatten())
            };
            let mut pending = false;
            for info in &infos {
                if let Some(a) = st.authorizations.iter_mut().find(|a| a.url == info.url) {
                    a.status = info.status;
                }
                match info.status {
                    AuthzStatus::Pending => pending = true,
                    AuthzStatus::Valid => {}
                    _ => {
                        let problem = info
                            .challenge
                            .as_ref()
                            .and_then(|(_, _, e, _)| e.as_ref())
                            .map(|p| CaProblem::from_instant(p, None))
                            .unwrap_or_else(|| CaProblem {
                                problem_type: String::new(),
                                detail: format!(
                                    "authorization for {} is {:?}",
                                    info.identifier, info.status
                                ),
                                status: None,
                                subproblems: Vec::new(),
                                retry_after: None,
                            });
                        st.status = OrderStatus::Invalid;
                        st.error = Some(problem.clone());
                        return Err(AcmeError::Ca(problem));
                    }
                }
            }
            if !pending {
                // The order turns ready once every authorization is valid.
                let mut order = self.load_order(&url).await?;
                Self::sync_order(st, &mut order);
                return Ok(());
            }
            let wait = retry_after.unwrap_or(delay);
            if Instant::now() + wait > deadline {
                return Err(AcmeError::Timeout(
                    "authorizations are still pending".into(),
                ));
            }
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(self.timing.poll_max);
        }
    }

    /// Step 6: sends the CSR (DER, from the caller; its SANs must equal the order's names).
    /// When the order is already `processing` or `valid` (finalized before a crash) it sends
    /// nothing.
    pub async fn finalize(&self, st: &mut OrderState, csr_der: &[u8]) -> Result<(), AcmeError> {
        let url = st.order_url("finalize")?;
        let mut order = self.load_order(&url).await?;
        Self::sync_order(st, &mut order);
        match st.status {
            OrderStatus::Processing | OrderStatus::Valid => return Ok(()),
            OrderStatus::Ready => {}
            OrderStatus::Invalid => {
                return Err(AcmeError::Ca(st.error.clone().unwrap_or_else(|| {
                    CaProblem {
                        problem_type: String::new(),
                        detail: "the order is invalid".into(),
                        status: None,
                        subproblems: Vec::new(),
                        retry_after: None,
                    }
                })));
            }
            s => {
                return Err(AcmeError::WrongStep {
                    step: "finalize",
                    reason: format!("the order is {s:?}, not ready"),
                });
            }
        }
        let (r, _) = acme_call!(
            &self.retry,
            "finalize",
            true,
            false,
            order.finalize_csr(csr_der)
        );
        match r {
            Ok(()) => {}
            // A retried finalize whose first attempt went through: the order moved on.
            Err(AcmeError::Ca(p)) if p.is("orderNotReady") => {
                let mut again = self.load_order(&url).await?;
                Self::sync_order(st, &mut again);
                if !matches!(st.status, OrderStatus::Processing | OrderStatus::Valid) {
                    return Err(AcmeError::Ca(p));
                }
            }
            Err(e) => {
                if let AcmeError::Ca(p) = &e {
                    st.error = Some(p.clone());
                }
                return Err(e);
            }
        }
        Self::sync_order(st, &mut order);
        st.finalized = true;
        Ok(())
    }

    /// Step 7: waits for the certificate and downloads the chain. With `preferred_issuer`,
    /// the default chain and the alternates (`Link: rel="alternate"`) are compared and the
    /// first whose top certificate's issuer contains that text (case-insensitive, e.g. a root's
    /// CN) is returned; the default chain when none matches.
    pub async fn download(
        &self,
        st: &mut OrderState,
        preferred_issuer: Option<&str>,
    ) -> Result<CertificateChain, AcmeError> {
        let url = st.order_url("download")?;
        let deadline = Instant::now() + self.timing.poll_timeout;
        let mut delay = self.timing.poll_initial;
        let mut order = loop {
            let (r, cap) = acme_call!(
                &self.retry,
                "getOrder",
                true,
                false,
                self.account.order(url.clone())
            );
            let mut order = r?;
            Self::sync_order(st, &mut order);
            match st.status {
                OrderStatus::Valid => break order,
                OrderStatus::Processing => {}
                OrderStatus::Invalid => {
                    return Err(AcmeError::Ca(st.error.clone().unwrap_or_else(|| {
                        CaProblem {
                            problem_type: String::new(),
                            detail: "the order became invalid during issuance".into(),
                            status: None,
                            subproblems: Vec::new(),
                            retry_after: None,
                        }
                    })));
                }
                s => {
                    return Err(AcmeError::WrongStep {
                        step: "download",
                        reason: format!("the order is {s:?}; finalize it first"),
                    });
                }
            }
            let wait = with_captured(&cap, |g| g.retry_after)
                .flatten()
                .unwrap_or(delay);
            if Instant::now() + wait > deadline {
                return Err(AcmeError::Timeout(
                    "the certificate is still being issued".into(),
                ));
            }
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(self.timing.poll_max);
        };
        let (r, cap) = acme_call!(
            &self.retry,
            "getCertificate",
            true,
            false,
            order.certificate()
        );
        let pem =
            r?.ok_or_else(|| AcmeError::Protocol("no certificate for a valid order".into()))?;
        let default = CertificateChain::from_pem(pem)?;
        let Some(pref) = preferred_issuer else {
            return Ok(default);
        };
        let wanted = pref.to_ascii_lowercase();
        if default.top_issuer.to_ascii_lowercase().contains(&wanted) {
            return Ok(default);
        }
        let alternates: Vec<String> = with_captured(&cap, |g| {
            g.links
                .iter()
                .filter(|(rel, _)| rel == "alternate")
                .map(|(_, u)| u.clone())
                .collect()
        })
        .unwrap_or_default();
        for alt in alternates {
            let chain = self.fetch_chain(&alt).await?;
            if chain.top_issuer.to_ascii_lowercase().contains(&wanted) {
                return Ok(chain);
            }
        }
        Ok(default)
    }

    /// POST-as-GET of an alternate chain URL. instant-acme has no generic POST-as-GET, so this
    /// uses `Account::order` (a signed POST-as-GET with nonce handling and retries) and takes
    /// the body from our HTTP layer's capture: the PEM is not order JSON, so the JSON parse
    /// fails after a successful response.
    async fn fetch_chain(&self, url: &str) -> Result<CertificateChain, AcmeError> {
        let (r, cap) = acme_call!(
            &self.retry,
            "getAlternateChain",
            true,
            true,
            self.account.order(url.to_owned())
        );
        let (status, body) =
            with_captured(&cap, |g| (g.status, g.body.take())).unwrap_or((None, None));
        match (r, status, body) {
            (Err(AcmeError::Protocol(_)), Some(200), Some(body)) => {
                let pem = String::from_utf8(body.to_vec())
                    .map_err(|_| AcmeError::Protocol("alternate chain is not text".into()))?;
                CertificateChain::from_pem(pem)
            }
            (Err(e), _, _) => Err(e),
            (Ok(_), _, _) => Err(AcmeError::Protocol(format!(
                "alternate chain URL {url} returned an order"
            ))),
        }
    }

    /// Cancels: deactivates every pending authorization (so the order can never complete) and
    /// marks the state cancelled. The caller then removes [`OrderState::published_records`].
    pub async fn cancel(&self, st: &mut OrderState) -> Result<(), AcmeError> {
        let Some(url) = st.order_url.clone() else {
            st.status = OrderStatus::Cancelled;
            return Ok(());
        };
        let mut order = self.load_order(&url).await?;
        Self::sync_order(st, &mut order);
        if matches!(st.status, OrderStatus::Pending | OrderStatus::Ready) {
            let infos = self.fetch_authzs(&mut order).await?;
            for info in infos.iter().filter(|i| i.status == AuthzStatus::Pending) {
                let authz_url = info.url.clone();
                let (r, _) =
                    acme_call!(&self.retry, "deactivateAuthorization", true, false, async {
                        let mut stream = order.authorizations();
                        while let Some(h) = stream.next().await {
                            let mut h = h?;
                            if h.url() == authz_url {
                                h.deactivate().await?;
                                return Ok(());
                            }
                        }
                        Ok(())
                    });
                r?;
                if let Some(a) = st.authorizations.iter_mut().find(|a| a.url == info.url) {
                    a.status = AuthzStatus::Deactivated;
                }
            }
        }
        if st.status != OrderStatus::Valid {
            st.status = OrderStatus::Cancelled;
        }
        Ok(())
    }

    /// Drives the order from wherever `st` is to the certificate: creates it if needed,
    /// publishes through `publisher`, answers the challenges, polls, finalizes with `csr_der`,
    /// downloads, and removes the published records. `persist` is called after every step
    /// with the state to store; a process killed at any point continues from the last
    /// persisted state with a new client (same account) and this same call. When the order
    /// fails (CA problem), the published records are removed before the error is returned.
    pub async fn run_order<P: TxtPublisher>(
        &self,
        st: &mut OrderState,
        publisher: &P,
        csr_der: &[u8],
        preferred_issuer: Option<&str>,
        persist: &mut (dyn FnMut(&OrderState) + Send),
    ) -> Result<CertificateChain, AcmeError> {
        loop {
            let step = st.next_step();
            let r = match step {
                Step::CreateOrder => self.new_order(st).await,
                Step::FetchChallenges => self.fetch_challenges(st).await,
                Step::Publish => {
                    for rec in st.to_publish() {
                        publisher.publish(&rec).await.map_err(|e| {
                            AcmeError::Invalid(format!("publishing {}: {e}", rec.name))
                        })?;
                        st.mark_published(&rec);
                        persist(st);
                    }
                    Ok(())
                }
                Step::SubmitChallenges => self.submit_challenges(st).await,
                Step::PollAuthorizations => self.poll_authorizations(st).await,
                Step::Finalize => self.finalize(st, csr_der).await,
                Step::Download => {
                    let chain = self.download(st, preferred_issuer).await;
                    persist(st);
                    if chain.is_ok() {
                        unpublish_all(st, publisher).await;
                    }
                    return chain;
                }
                Step::Failed => {
                    unpublish_all(st, publisher).await;
                    return Err(AcmeError::Ca(st.error.clone().unwrap_or_else(|| {
                        CaProblem {
                            problem_type: String::new(),
                            detail: format!("the order is {:?}", st.status),
                            status: None,
                            subproblems: Vec::new(),
                            retry_after: None,
                        }
                    })));
                }
            };
            persist(st);
            if let Err(e) = r {
                if matches!(st.status, OrderStatus::Invalid) {
                    unpublish_all(st, publisher).await;
                    persist(st);
                }
                return Err(e);
            }
        }
    }
}

async fn unpublish_all<P: TxtPublisher>(st: &mut OrderState, publisher: &P) {
    for rec in st.published_records() {
        match publisher.unpublish(&rec).await {
            Ok(()) => {
                for a in &mut st.authorizations {
                    if a.txt_name == rec.name && a.txt_value == rec.value {
                        a.published = false;
                    }
                }
            }
            Err(e) => tracing::warn!(record = %rec.name, error = %e, "could not remove TXT record"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authz(status: AuthzStatus, published: bool, ready_sent: bool) -> AuthzState {
        AuthzState {
            url: "u".into(),
            identifier: "x.test".into(),
            status,
            challenge_url: Some("c".into()),
            txt_name: "_acme-challenge.x.test".into(),
            txt_value: "v".into(),
            published,
            ready_sent,
        }
    }

    #[test]
    fn next_step_follows_the_state() {
        let mut st = OrderState::new(OrderRequest {
            identifiers: vec!["x.test".into()],
            ..OrderRequest::default()
        });
        assert_eq!(st.next_step(), Step::CreateOrder);
        st.order_url = Some("o".into());
        st.status = OrderStatus::Pending;
        assert_eq!(st.next_step(), Step::FetchChallenges);
        st.authorizations = vec![authz(AuthzStatus::Pending, false, false)];
        assert_eq!(st.next_step(), Step::Publish);
        assert_eq!(st.to_publish().len(), 1);
        st.mark_published(&st.to_publish()[0].clone());
        assert_eq!(st.next_step(), Step::SubmitChallenges);
        st.authorizations[0].ready_sent = true;
        assert_eq!(st.next_step(), Step::PollAuthorizations);
        st.authorizations[0].status = AuthzStatus::Valid;
        assert_eq!(st.next_step(), Step::Finalize);
        st.status = OrderStatus::Processing;
        assert_eq!(st.next_step(), Step::Download);
        st.status = OrderStatus::Invalid;
        assert_eq!(st.next_step(), Step::Failed);
        // Round trip through JSON, as the caller persists it.
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<OrderState>(&json).unwrap(), st);
    }

    #[test]
    fn wildcard_and_apex_share_the_name() {
        assert_eq!(base_domain("*.Example.test"), "example.test");
        assert_eq!(base_domain("example.test."), "example.test");
    }
}
