//! certvault-acme against Debian's pebble, its VA resolving through a real BIND 9 updated with
//! certvault-dns (RFC 2136 + TSIG), or through pebble-challtestsrv (the notify flow, where the
//! test plays the user who sets the record). Every component is started by the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use certvault_acme::{
    AccountConfig, AccountCredentials, AcmeClient, AcmeError, ExternalAccountBinding, OrderRequest,
    OrderState, OrderStatus, RetryConfig, Step, TrustRoots, TxtPublisher, TxtRecord,
};
use certvault_crypto::{CertParams, Curve, KeyAlg, PrivateKey};
use certvault_dns::{AuthoritativeCheck, NameServers, Rfc2136, TsigKey};
use certvault_testkit::{Bind, ChallTestSrv, Pebble, PebbleOptions, openssl_sans, openssl_verify};

// ------------------------------------------------------------------------------------ helpers

struct Rfc2136Publisher(Rfc2136);

impl TxtPublisher for Rfc2136Publisher {
    async fn publish(&self, r: &TxtRecord) -> Result<(), String> {
        self.0
            .append_txt(&r.name, &r.value, 60)
            .await
            .map_err(|e| e.to_string())
    }
    async fn unpublish(&self, r: &TxtRecord) -> Result<(), String> {
        self.0
            .remove_txt(&r.name, &r.value)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Publishes a wrong value instead of the right one.
struct WrongValuePublisher(Rfc2136);

impl TxtPublisher for WrongValuePublisher {
    async fn publish(&self, r: &TxtRecord) -> Result<(), String> {
        self.0
            .append_txt(&r.name, "not-the-key-authorization-digest", 60)
            .await
            .map_err(|e| e.to_string())
    }
    async fn unpublish(&self, r: &TxtRecord) -> Result<(), String> {
        self.0
            .remove_txt(&r.name, "not-the-key-authorization-digest")
            .await
            .map_err(|e| e.to_string())
    }
}

fn rfc2136(bind: &Bind) -> Rfc2136 {
    let key = TsigKey::hmac_sha256(&bind.key_name, &bind.key_secret).unwrap();
    Rfc2136::new(&bind.zone, &bind.addr, key).unwrap()
}

fn csr(names: &[&str]) -> Vec<u8> {
    let key = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    let p = CertParams {
        dns_names: names.iter().map(|s| s.to_string()).collect(),
        ..CertParams::default()
    };
    certvault_crypto::csr(&key, &p).unwrap()
}

fn roots(pebble: &Pebble) -> TrustRoots {
    TrustRoots::Only(pebble.tls_ca_pem.clone())
}

async fn account(pebble: &Pebble) -> (AcmeClient, AccountCredentials) {
    let mut cfg = AccountConfig::new(pebble.directory_url.clone());
    cfg.contact = vec!["mailto:ops@example.test".into()];
    cfg.terms_of_service_agreed = true;
    cfg.roots = roots(pebble);
    AcmeClient::create_account(&cfg, RetryConfig::default())
        .await
        .unwrap()
}

fn request(names: &[&str]) -> OrderRequest {
    OrderRequest {
        identifiers: names.iter().map(|s| s.to_string()).collect(),
        ..OrderRequest::default()
    }
}

/// Orders `names` through BIND + RFC 2136 and checks the chain with openssl.
async fn order_through_bind(zone: &str, names: &[&str], nonce_reject: u8) {
    let bind = Bind::start(zone);
    let mut opts = PebbleOptions::new(&bind.addr);
    opts.nonce_reject_percent = nonce_reject;
    let pebble = Pebble::start(&opts).await;
    let (client, _) = account(&pebble).await;
    let publisher = Rfc2136Publisher(rfc2136(&bind));
    let mut st = OrderState::new(request(names));
    let persisted = Arc::new(Mutex::new(Vec::<String>::new()));
    let p2 = persisted.clone();
    let mut persist =
        move |s: &OrderState| p2.lock().unwrap().push(serde_json::to_string(s).unwrap());
    let chain = client
        .run_order(&mut st, &publisher, &csr(names), None, &mut persist)
        .await
        .unwrap_or_else(|e| panic!("order failed: {e}\npebble log:\n{}", pebble.log()));
    assert_eq!(st.status, OrderStatus::Valid);
    assert!(st.all_validated());
    assert!(
        persisted.lock().unwrap().len() >= 5,
        "state persisted after every step"
    );
    let root = pebble.root_pem(0).await;
    openssl_verify(&chain.pem, &root);
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(openssl_sans(&chain.pem), want);
    // The published records were removed.
    for a in &st.authorizations {
        assert!(
            bind.dig_txt(&a.txt_name).is_empty(),
            "{} left behind",
            a.txt_name
        );
    }
    assert_eq!(pebble.orders_created(), 1);
}

// -------------------------------------------------------------------------------------- tests

#[tokio::test]
async fn account_created_then_reused_from_credentials() {
    let chall = ChallTestSrv::start();
    let pebble = Pebble::start(&PebbleOptions::new(&chall.dns_addr)).await;
    let (client, creds) = account(&pebble).await;
    assert!(client.account_url().starts_with("https://127.0.0.1:"));
    let json = creds.to_json();
    let dbg = format!("{creds:?} {client:?}");
    assert!(dbg.contains("[redacted]"));
    assert!(!dbg.contains("key_pkcs8"));
    let back = AccountCredentials::from_json(&json).unwrap();
    let again = AcmeClient::from_credentials(&back, &roots(&pebble), RetryConfig::default())
        .await
        .unwrap();
    assert_eq!(again.account_url(), client.account_url());
    // The reused account can order.
    let mut st = OrderState::new(request(&["reuse.example.test"]));
    again.new_order(&mut st).await.unwrap();
    assert!(st.order_url.is_some());
    assert!(!client.directory().external_account_required);
    assert!(
        client.directory().renewal_info.is_none(),
        "pebble 2.4 has no ARI"
    );
}

#[tokio::test]
async fn account_with_external_account_binding() {
    let chall = ChallTestSrv::start();
    let hmac = base64url(&certvault_testkit::random_bytes(32));
    let mut opts = PebbleOptions::new(&chall.dns_addr);
    opts.eab = Some(vec![("kid-1".into(), hmac.clone())]);
    let pebble = Pebble::start(&opts).await;

    let mut cfg = AccountConfig::new(pebble.directory_url.clone());
    cfg.terms_of_service_agreed = true;
    cfg.roots = roots(&pebble);
    // No EAB: refused before asking (the directory says it is required).
    let err = AcmeClient::create_account(&cfg, RetryConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, AcmeError::Invalid(_)), "{err}");

    // Wrong HMAC key: the CA's problem, typed.
    cfg.eab = Some(
        ExternalAccountBinding::new("kid-1", &base64url(&certvault_testkit::random_bytes(32)))
            .unwrap(),
    );
    let err = AcmeClient::create_account(&cfg, RetryConfig::default())
        .await
        .unwrap_err();
    let p = err
        .problem()
        .unwrap_or_else(|| panic!("not a CA problem: {err}"));
    assert!(
        p.problem_type.starts_with("urn:ietf:params:acme:error:"),
        "{p}"
    );
    assert!(!err.to_string().contains(&hmac));

    cfg.eab = Some(ExternalAccountBinding::new("kid-1", &hmac).unwrap());
    let (client, _) = AcmeClient::create_account(&cfg, RetryConfig::default())
        .await
        .unwrap();
    assert!(client.directory().external_account_required);
    let mut st = OrderState::new(request(&["eab.example.test"]));
    client.new_order(&mut st).await.unwrap();
}

#[tokio::test]
async fn order_single_name() {
    order_through_bind("single.test", &["www.single.test"], 0).await;
}

#[tokio::test]
async fn order_san_three_names() {
    order_through_bind("san.test", &["san.test", "www.san.test", "api.san.test"], 0).await;
}

#[tokio::test]
async fn order_wildcard_and_apex() {
    // Two TXT values on _acme-challenge.wild.test at the same time.
    order_through_bind("wild.test", &["*.wild.test", "wild.test"], 0).await;
}

#[tokio::test]
async fn order_completes_with_half_the_nonces_rejected() {
    order_through_bind(
        "nonce.test",
        &["*.nonce.test", "nonce.test", "www.nonce.test"],
        50,
    )
    .await;
}

#[tokio::test]
async fn order_with_record_set_through_challtestsrv() {
    // The notify flow: the caller (here the test, as the user) sets the records; certvault
    // checks the authoritative server, marks them published, then asks the CA.
    let chall = ChallTestSrv::start();
    let pebble = Pebble::start(&PebbleOptions::new(&chall.dns_addr)).await;
    let (client, _) = account(&pebble).await;
    let names = ["notify.example.test", "*.notify.example.test"];
    let mut st = OrderState::new(request(&names));
    client.new_order(&mut st).await.unwrap();
    assert_eq!(st.next_step(), Step::FetchChallenges);
    client.fetch_challenges(&mut st).await.unwrap();
    assert_eq!(st.next_step(), Step::Publish);
    let records = st.to_publish();
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r.name == "_acme-challenge.notify.example.test")
    );
    for r in &records {
        // TXT value = base64url(SHA-256(keyAuthorization)): 43 characters, no padding.
        assert_eq!(r.value.len(), 43);
        chall.set_txt(&r.name, &r.value).await;
    }
    for r in &records {
        st.mark_published(r);
    }
    assert_eq!(st.next_step(), Step::SubmitChallenges);
    client.submit_challenges(&mut st).await.unwrap();
    client.poll_authorizations(&mut st).await.unwrap();
    assert_eq!(st.status, OrderStatus::Ready);
    assert_eq!(st.next_step(), Step::Finalize);
    client.finalize(&mut st, &csr(&names)).await.unwrap();
    let chain = client.download(&mut st, None).await.unwrap();
    openssl_verify(&chain.pem, &pebble.root_pem(0).await);
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(openssl_sans(&chain.pem), want);
    chall.clear_txt("_acme-challenge.notify.example.test").await;
}

#[tokio::test]
async fn wrong_txt_value_ends_in_a_typed_ca_error() {
    let bind = Bind::start("wrong.test");
    let pebble = Pebble::start(&PebbleOptions::new(&bind.addr)).await;
    let (client, _) = account(&pebble).await;
    let publisher = WrongValuePublisher(rfc2136(&bind));
    let mut st = OrderState::new(request(&["wrong.test"]));
    let err = client
        .run_order(
            &mut st,
            &publisher,
            &csr(&["wrong.test"]),
            None,
            &mut |_| {},
        )
        .await
        .unwrap_err();
    let p = err
        .problem()
        .unwrap_or_else(|| panic!("not a CA problem: {err:?}"));
    // Pebble 2.4 reports a wrong TXT value as `unauthorized`.
    assert_eq!(p.short_type(), "unauthorized", "{p}");
    assert!(!p.detail.is_empty());
    assert_eq!(st.status, OrderStatus::Invalid);
    assert_eq!(st.next_step(), Step::Failed);
    assert_eq!(st.error.as_ref(), Some(p));
    assert!(
        bind.dig_txt("_acme-challenge.wrong.test").is_empty(),
        "cleaned up"
    );
}

#[tokio::test]
async fn killed_mid_order_resumes_without_a_second_order() {
    let bind = Bind::start("resume.test");
    let pebble = Pebble::start(&PebbleOptions::new(&bind.addr)).await;
    let names = ["resume.test", "*.resume.test"];
    let dns = rfc2136(&bind);

    // First "process": creates the order, fetches challenges, publishes one record, persists,
    // and dies (everything dropped; only the JSON survives).
    let (saved_state, saved_creds, order_url) = {
        let (client, creds) = account(&pebble).await;
        let mut st = OrderState::new(request(&names));
        client.new_order(&mut st).await.unwrap();
        client.fetch_challenges(&mut st).await.unwrap();
        let first = st.to_publish()[0].clone();
        dns.append_txt(&first.name, &first.value, 60).await.unwrap();
        st.mark_published(&first);
        let url = st.order_url.clone().unwrap();
        (serde_json::to_string(&st).unwrap(), creds.to_json(), url)
    };

    // Second "process": a new client from the stored credentials and state.
    let creds = AccountCredentials::from_json(&saved_creds).unwrap();
    let client = AcmeClient::from_credentials(&creds, &roots(&pebble), RetryConfig::default())
        .await
        .unwrap();
    let mut st: OrderState = serde_json::from_str(&saved_state).unwrap();
    assert_eq!(st.next_step(), Step::Publish);
    let publisher = Rfc2136Publisher(dns);
    let chain = client
        .run_order(&mut st, &publisher, &csr(&names), None, &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("resume failed: {e}\n{}", pebble.log()));
    openssl_verify(&chain.pem, &pebble.root_pem(0).await);
    assert_eq!(st.order_url.as_deref(), Some(order_url.as_str()));
    assert_eq!(pebble.orders_created(), 1, "no second order");

    // A third run on the finished state downloads again, still without a new order.
    let again = client
        .run_order(&mut st, &publisher, &csr(&names), None, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(again.pem, chain.pem);
    assert_eq!(pebble.orders_created(), 1);
    // And new_order refuses to create a duplicate for a state that has an order.
    assert!(matches!(
        client.new_order(&mut st).await,
        Err(AcmeError::WrongStep { .. })
    ));
}

#[tokio::test]
async fn resume_after_challenge_answered_does_not_answer_twice() {
    let bind = Bind::start("twice.test");
    let pebble = Pebble::start(&PebbleOptions::new(&bind.addr)).await;
    let (client, _) = account(&pebble).await;
    let publisher = Rfc2136Publisher(rfc2136(&bind));
    let mut st = OrderState::new(request(&["twice.test"]));
    client.new_order(&mut st).await.unwrap();
    client.fetch_challenges(&mut st).await.unwrap();
    let saved = st.clone(); // persisted before the challenge was answered
    for r in st.to_publish() {
        publisher.publish(&r).await.unwrap();
        st.mark_published(&r);
    }
    let mut crashed = st.clone();
    client.submit_challenges(&mut st).await.unwrap();
    // The process died before persisting `ready_sent`: the resumed run must notice the CA
    // already has the answer.
    crashed
        .authorizations
        .iter_mut()
        .for_each(|a| a.ready_sent = false);
    assert_eq!(crashed.next_step(), Step::SubmitChallenges);
    let chain = client
        .run_order(
            &mut crashed,
            &publisher,
            &csr(&["twice.test"]),
            None,
            &mut |_| {},
        )
        .await
        .unwrap();
    openssl_verify(&chain.pem, &pebble.root_pem(0).await);
    assert_eq!(saved.order_url, crashed.order_url);
    assert_eq!(pebble.orders_created(), 1);
}

#[tokio::test]
async fn cancel_deactivates_pending_authorizations() {
    let bind = Bind::start("cancel.test");
    let pebble = Pebble::start(&PebbleOptions::new(&bind.addr)).await;
    let (client, _) = account(&pebble).await;
    let mut st = OrderState::new(request(&["cancel.test", "www.cancel.test"]));
    client.new_order(&mut st).await.unwrap();
    client.fetch_challenges(&mut st).await.unwrap();
    client.cancel(&mut st).await.unwrap();
    assert_eq!(st.status, OrderStatus::Cancelled);
    assert_eq!(st.next_step(), Step::Failed);
    assert!(
        st.authorizations
            .iter()
            .all(|a| a.status == certvault_acme::AuthzStatus::Deactivated)
    );
}

#[tokio::test]
async fn propagation_check_then_order() {
    // rfc2136 publish, then the authoritative check says visible, then the CA validates.
    let bind = Bind::start("check.test");
    let pebble = Pebble::start(&PebbleOptions::new(&bind.addr)).await;
    let (client, _) = account(&pebble).await;
    let dns = rfc2136(&bind);
    let check = AuthoritativeCheck::new(&bind.zone, NameServers::Explicit(vec![bind.addr.clone()]))
        .unwrap();
    let mut st = OrderState::new(request(&["check.test"]));
    client.new_order(&mut st).await.unwrap();
    client.fetch_challenges(&mut st).await.unwrap();
    for r in st.to_publish() {
        assert!(
            !check
                .check_txt(&r.name, &r.value)
                .await
                .unwrap()
                .all_present()
        );
        dns.append_txt(&r.name, &r.value, 60).await.unwrap();
        assert!(
            check
                .check_txt(&r.name, &r.value)
                .await
                .unwrap()
                .all_present()
        );
        st.mark_published(&r);
    }
    client.submit_challenges(&mut st).await.unwrap();
    client.poll_authorizations(&mut st).await.unwrap();
    assert!(st.all_validated());
}

#[tokio::test]
async fn preferred_chain_by_issuer_name() {
    let bind = Bind::start("chain.test");
    let mut opts = PebbleOptions::new(&bind.addr);
    opts.alternate_roots = 1;
    let pebble = Pebble::start(&opts).await;
    let (client, _) = account(&pebble).await;
    let publisher = Rfc2136Publisher(rfc2136(&bind));
    let names = ["chain.test"];
    let mut st = OrderState::new(request(&names));
    let default = client
        .run_order(&mut st, &publisher, &csr(&names), None, &mut |_| {})
        .await
        .unwrap();
    let root0 = pebble.root_pem(0).await;
    let root1 = pebble.root_pem(1).await;
    openssl_verify(&default.pem, &root0);
    // The alternate chain ends at root 1: ask for it by (part of) its name.
    let root1_cn = subject_cn(&root1);
    let alt = client.download(&mut st, Some(&root1_cn)).await.unwrap();
    assert_ne!(alt.pem, default.pem);
    assert!(
        alt.top_issuer.contains(&root1_cn),
        "{} vs {root1_cn}",
        alt.top_issuer
    );
    openssl_verify(&alt.pem, &root1);
    // Asking for the default chain's issuer returns the default chain.
    let same = client
        .download(&mut st, Some(&subject_cn(&root0)))
        .await
        .unwrap();
    assert_eq!(same.pem, default.pem);
}

fn subject_cn(pem: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    c.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

fn base64url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
