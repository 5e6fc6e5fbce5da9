//! certvault-dns against a real BIND 9 (`named`) started by the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use certvault_dns::{AuthoritativeCheck, DnsError, NameServers, Rfc2136, ServerOutcome, TsigKey};
use certvault_testkit::Bind;

fn updater(bind: &Bind) -> Rfc2136 {
    let key = TsigKey::hmac_sha256(&bind.key_name, &bind.key_secret).unwrap();
    Rfc2136::new(&bind.zone, &bind.addr, key).unwrap()
}

#[tokio::test]
async fn append_keeps_both_values_and_remove_deletes_one() {
    let bind = Bind::start("dns-append.test");
    let dns = updater(&bind);
    let name = "_acme-challenge.dns-append.test";
    dns.append_txt(name, "value-apex", 60).await.unwrap();
    dns.append_txt(name, "value-wildcard", 60).await.unwrap();
    // Appending the same value again changes nothing.
    dns.append_txt(name, "value-apex", 60).await.unwrap();
    assert_eq!(bind.dig_txt(name), vec!["value-apex", "value-wildcard"]);

    dns.remove_txt(name, "value-apex").await.unwrap();
    assert_eq!(bind.dig_txt(name), vec!["value-wildcard"]);
    // Removing a value that is not there is not an error.
    dns.remove_txt(name, "value-apex").await.unwrap();
    dns.remove_txt(name, "value-wildcard").await.unwrap();
    assert!(bind.dig_txt(name).is_empty());
}

#[tokio::test]
async fn wrong_tsig_secret_is_a_clear_error() {
    let bind = Bind::start("dns-badkey.test");
    // Same name, another secret.
    let key = TsigKey::hmac_sha256(
        &bind.key_name,
        "d3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZ3dyb25nMTI=",
    )
    .unwrap();
    let dns = Rfc2136::new(&bind.zone, &bind.addr, key).unwrap();
    let err = dns
        .append_txt("_acme-challenge.dns-badkey.test", "v", 60)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::TsigRejected { server, key_name } if server == &bind.addr && key_name == "certvault-test"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("TSIG key \"certvault-test\" rejected by {}", bind.addr)
    );
    assert!(bind.dig_txt("_acme-challenge.dns-badkey.test").is_empty());

    // An unknown key name is rejected the same way.
    let key = TsigKey::hmac_sha256("no-such-key", &bind.key_secret).unwrap();
    let dns = Rfc2136::new(&bind.zone, &bind.addr, key).unwrap();
    let err = dns
        .append_txt("_acme-challenge.dns-badkey.test", "v", 60)
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::TsigRejected { .. }), "{err:?}");
}

#[tokio::test]
async fn names_outside_the_zone_are_refused_before_sending() {
    let bind = Bind::start("dns-outside.test");
    let err = updater(&bind)
        .append_txt("_acme-challenge.elsewhere.test", "v", 60)
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::InvalidName { .. }), "{err:?}");
}

#[tokio::test]
async fn tsig_secret_never_in_debug() {
    let key = TsigKey::hmac_sha256("k", "c2VjcmV0LXNlY3JldC1zZWNyZXQ=").unwrap();
    let dbg = format!("{key:?}");
    assert!(!dbg.contains("c2VjcmV0"), "{dbg}");
    assert!(dbg.contains("[redacted]"));
    let err = TsigKey::hmac_sha256("k", "not base64 !!!").unwrap_err();
    assert!(!err.to_string().contains("not base64 !!!"));
}

#[tokio::test]
async fn authoritative_check_explicit_servers() {
    let bind = Bind::start("dns-check.test");
    let dns = updater(&bind);
    let name = "_acme-challenge.www.dns-check.test";
    let check = AuthoritativeCheck::new(&bind.zone, NameServers::Explicit(vec![bind.addr.clone()]))
        .unwrap();

    let report = check.check_txt(name, "expected-value").await.unwrap();
    assert!(!report.all_present());
    assert_eq!(report.servers.len(), 1);
    assert_eq!(report.servers[0].1, ServerOutcome::Missing { seen: vec![] });

    dns.append_txt(name, "other-value", 60).await.unwrap();
    let report = check.check_txt(name, "expected-value").await.unwrap();
    assert!(!report.all_present());
    assert_eq!(
        report.servers[0].1,
        ServerOutcome::Missing {
            seen: vec!["other-value".into()]
        }
    );
    assert!(report.pending_summary().contains(&bind.addr));

    dns.append_txt(name, "expected-value", 60).await.unwrap();
    let report = check.check_txt(name, "expected-value").await.unwrap();
    assert!(report.all_present(), "{report:?}");

    dns.remove_txt(name, "expected-value").await.unwrap();
    assert!(
        !check
            .check_txt(name, "expected-value")
            .await
            .unwrap()
            .all_present()
    );
}

#[tokio::test]
async fn authoritative_check_discovers_ns_and_reports_each_server() {
    let bind = Bind::start("dns-discover.test");
    let dns = updater(&bind);
    let name = "_acme-challenge.dns-discover.test";
    // Discovery asks a resolver for the zone's NS (ns.dns-discover.test → 127.0.0.1) and then
    // each server on the given port; BIND itself answers the NS query here.
    let check = AuthoritativeCheck::new(
        &bind.zone,
        NameServers::Discover {
            resolver: Some(bind.addr.clone()),
            port: bind.port,
        },
    )
    .unwrap();
    let servers = check.servers().await.unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].name, "ns.dns-discover.test.");
    assert_eq!(servers[0].addr.to_string(), bind.addr);

    dns.append_txt(name, "v1", 60).await.unwrap();
    assert!(check.check_txt(name, "v1").await.unwrap().all_present());
    assert!(!check.check_txt(name, "v2").await.unwrap().all_present());

    // Two servers, one of which does not serve the zone: not all present, and the report
    // says which one.
    let other = Bind::start("unrelated.test");
    let both = AuthoritativeCheck::new(
        &bind.zone,
        NameServers::Explicit(vec![bind.addr.clone(), other.addr.clone()]),
    )
    .unwrap();
    let report = both.check_txt(name, "v1").await.unwrap();
    assert!(!report.all_present());
    assert_eq!(report.servers[0].1, ServerOutcome::Present);
    assert!(
        matches!(report.servers[1].1, ServerOutcome::NotAuthoritative { .. }),
        "{report:?}"
    );

    assert_eq!(
        certvault_dns::find_zone("_acme-challenge.www.dns-discover.test", Some(&bind.addr))
            .await
            .unwrap(),
        "dns-discover.test."
    );
}
