//! Certificates and CSRs: building, parsing back, signatures, chains, subjects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;

use certvault_crypto::*;
use common::*;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::{FromDer, X509Certificate};

fn full_params() -> CertParams {
    CertParams {
        subject: "CN=web.example.com, OU=Eng, OU=Web, O=\"Acme, Inc.\", L=Seattle, ST=WA, C=us, \
                  E=admin@example.com, DC=example, DC=com"
            .into(),
        dns_names: vec!["web.example.com".into(), "*.web.example.com".into()],
        emails: vec!["admin@example.com".into()],
        upns: vec!["alice@corp.example.com".into()],
        uris: vec!["spiffe://example.com/web".into()],
        ip_addresses: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
        ekus: vec![
            "1.3.6.1.5.5.7.3.1".into(),
            "1.3.6.1.5.5.7.3.2".into(),
            "1.2.3.4.5".into(),
        ],
        key_usage: vec![
            KeyUsage::DigitalSignature,
            KeyUsage::KeyEncipherment,
            KeyUsage::DecipherOnly,
        ],
        is_ca: false,
        not_before: 1_700_000_000,
        not_after: 1_800_000_000,
    }
}

fn x509(der: &[u8]) -> X509Certificate<'_> {
    let (rest, c) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    c
}

#[test]
fn self_signed_round_trip_all_fields() {
    for alg in [
        KeyAlg::Rsa(2048),
        KeyAlg::Ec(Curve::P256),
        KeyAlg::Ec(Curve::P384),
        KeyAlg::Ec(Curve::P521),
    ] {
        let key = PrivateKey::generate(alg).unwrap();
        let p = full_params();
        let der = self_signed(&key, &p).unwrap();
        let info = parse_certificate(&der).unwrap();
        assert_eq!(
            info.subject,
            "CN=web.example.com, OU=Eng, OU=Web, O=Acme\\, Inc., L=Seattle, ST=WA, C=US, \
             E=admin@example.com, DC=example, DC=com"
        );
        assert_eq!(info.issuer, info.subject);
        assert!(info.self_issued);
        validate_subject(&info.subject).unwrap();
        assert_eq!(info.dns_names, p.dns_names);
        assert_eq!(info.emails, p.emails);
        assert_eq!(info.upns, p.upns);
        assert_eq!(info.uris, p.uris);
        assert_eq!(
            info.ip_addresses,
            vec!["192.0.2.1".to_string(), "2001:db8::1".to_string()]
        );
        assert_eq!(info.ekus, p.ekus);
        assert_eq!(info.key_usage, p.key_usage);
        assert!(!info.is_ca);
        assert_eq!(info.not_before, p.not_before);
        assert_eq!(info.not_after, p.not_after);
        assert_eq!(info.public_key, key.public_key());
        assert_eq!(info.sha1, sha1(&der));
        assert_eq!(
            info.serial_hex.len(),
            32,
            "16-byte serial: {}",
            info.serial_hex
        );
        assert!(verify_signed_by(&der, &der).unwrap());

        // Cross-check with x509-parser directly: extensions and their criticality.
        let c = x509(&der);
        if alg != KeyAlg::Ec(Curve::P521) {
            // x509-parser 0.18 cannot verify ecdsa-with-SHA512 (checked above via aws-lc-rs).
            c.verify_signature(None).unwrap();
        }
        assert_eq!(c.version().0, 2);
        let exts: Vec<(String, bool)> = c
            .extensions()
            .iter()
            .map(|e| (e.oid.to_id_string(), e.critical))
            .collect();
        assert_eq!(
            exts,
            vec![
                ("2.5.29.17".into(), false),
                ("2.5.29.15".into(), true),
                ("2.5.29.37".into(), false),
                ("2.5.29.19".into(), true),
                ("2.5.29.14".into(), false),
            ]
        );
        let sig_oid = c.signature_algorithm.algorithm.to_id_string();
        let want = match alg {
            KeyAlg::Rsa(_) => "1.2.840.113549.1.1.11",
            KeyAlg::Ec(Curve::P256) => "1.2.840.10045.4.3.2",
            KeyAlg::Ec(Curve::P384) => "1.2.840.10045.4.3.3",
            _ => "1.2.840.10045.4.3.4",
        };
        assert_eq!(sig_oid, want);
        assert!(c.raw_serial()[0] & 0x80 == 0 || c.raw_serial()[0] == 0);
    }
}

#[test]
fn serials_are_random_and_positive() {
    let key = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    let a = parse_certificate(&self_signed(&key, &params("CN=a")).unwrap()).unwrap();
    let b = parse_certificate(&self_signed(&key, &params("CN=a")).unwrap()).unwrap();
    assert_ne!(a.serial_hex, b.serial_hex);
    assert_eq!(a.serial_hex.len(), 32);
}

#[test]
fn ca_flag_and_far_dates() {
    let key = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    let mut p = ca_params("CN=Test CA");
    p.not_before = -315_619_200; // 1960-01-01: UTCTime 60…
    p.not_after = 4_102_444_800; // 2100-01-01: GeneralizedTime
    let info = parse_certificate(&self_signed(&key, &p).unwrap()).unwrap();
    assert!(info.is_ca);
    assert_eq!(info.not_before, p.not_before);
    assert_eq!(info.not_after, p.not_after);
    assert_eq!(
        info.key_usage,
        vec![
            KeyUsage::DigitalSignature,
            KeyUsage::KeyCertSign,
            KeyUsage::CrlSign
        ]
    );
    assert!(info.dns_names.is_empty() && info.ekus.is_empty());
}

#[test]
fn empty_subject_needs_sans_and_marks_san_critical() {
    let key = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    let mut p = params("");
    let der = self_signed(&key, &p).unwrap();
    let c = x509(&der);
    let san = c
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "2.5.29.17")
        .unwrap();
    assert!(san.critical);
    assert_eq!(parse_certificate(&der).unwrap().subject, "");
    p.dns_names.clear();
    let e = self_signed(&key, &p).unwrap_err();
    assert!(matches!(e, CryptoError::BadParameter(_)));
    assert!(validate_params(&p).is_err());
    assert!(matches!(csr(&key, &p), Err(CryptoError::BadParameter(_))));
}

#[test]
fn bad_params_are_rejected() {
    let key = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    let base = params("CN=x");
    let mut cases: Vec<CertParams> = Vec::new();
    let mut p = base.clone();
    p.not_after = p.not_before;
    cases.push(p);
    let mut p = base.clone();
    p.subject = "XYZ=1".into();
    cases.push(p);
    let mut p = base.clone();
    p.dns_names = vec!["bad name.example.com".into()];
    cases.push(p);
    let mut p = base.clone();
    p.dns_names = vec!["bücher.example".into()];
    cases.push(p);
    let mut p = base.clone();
    p.dns_names = vec!["a.*.example".into()];
    cases.push(p);
    let mut p = base.clone();
    p.emails = vec!["no-at-sign".into()];
    cases.push(p);
    let mut p = base.clone();
    p.uris = vec!["not a uri".into()];
    cases.push(p);
    let mut p = base;
    p.ekus = vec!["serverAuth".into()];
    cases.push(p);
    for p in cases {
        let e = self_signed(&key, &p).unwrap_err();
        assert!(matches!(e, CryptoError::BadParameter(_)), "{p:?}: {e:?}");
    }
}

#[test]
fn validate_subject_messages() {
    validate_subject("CN=web.example.com, O=Acme, C=US").unwrap();
    validate_subject("cn=MyCert").unwrap();
    validate_subject("CN=a; O=b; OU=\"x, y\"").unwrap();
    validate_subject("").unwrap();
    let e = validate_subject("CN=a, Foo=b").unwrap_err();
    assert!(e.to_string().contains("unknown attribute 'Foo'"), "{e}");
    let e = validate_subject("CN").unwrap_err();
    assert!(e.to_string().contains("NAME=value"), "{e}");
    let e = validate_subject("C=USA").unwrap_err();
    assert!(e.to_string().contains("two-letter"), "{e}");
}

/// x509-parser's `verify_signature` (verify-aws) covers RSA, P-256 and P-384; x509-parser 0.18
/// has no ecdsa-with-SHA512/P-521 mapping, so that one is checked with aws-lc-rs directly.
fn csr_signature_ok(req: &X509CertificationRequest<'_>, alg: KeyAlg) -> Result<(), ()> {
    if alg != KeyAlg::Ec(Curve::P521) {
        return req.verify_signature().map_err(|_| ());
    }
    use aws_lc_rs::signature::{ECDSA_P521_SHA512_ASN1, UnparsedPublicKey};
    let info = &req.certification_request_info;
    assert_eq!(
        req.signature_algorithm.algorithm.to_id_string(),
        "1.2.840.10045.4.3.4"
    );
    UnparsedPublicKey::new(
        &ECDSA_P521_SHA512_ASN1,
        &info.subject_pki.subject_public_key.data,
    )
    .verify(info.raw, &req.signature_value.data)
    .map_err(|_| ())
}

#[test]
fn csr_parses_and_verifies() {
    for alg in [
        KeyAlg::Rsa(2048),
        KeyAlg::Ec(Curve::P256),
        KeyAlg::Ec(Curve::P384),
        KeyAlg::Ec(Curve::P521),
    ] {
        let key = PrivateKey::generate(alg).unwrap();
        let p = full_params();
        let der = csr(&key, &p).unwrap();
        let (rest, req) = X509CertificationRequest::from_der(&der).unwrap();
        assert!(rest.is_empty());
        csr_signature_ok(&req, alg).unwrap();
        let spki = req.certification_request_info.subject_pki.raw;
        assert_eq!(PublicKey::from_spki_der(spki).unwrap(), key.public_key());
        let exts: Vec<_> = req.requested_extensions().unwrap().collect();
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        let mut seen = (false, false, false, false);
        for e in exts {
            match e {
                ParsedExtension::SubjectAlternativeName(san) => {
                    seen.0 = true;
                    assert!(
                        san.general_names
                            .contains(&GeneralName::DNSName("web.example.com"))
                    );
                    assert!(
                        san.general_names
                            .iter()
                            .any(|g| matches!(g, GeneralName::OtherName(..)))
                    );
                }
                ParsedExtension::KeyUsage(ku) => {
                    seen.1 = true;
                    assert!(ku.digital_signature() && ku.key_encipherment() && ku.decipher_only());
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    seen.2 = true;
                    assert!(eku.server_auth && eku.client_auth);
                }
                ParsedExtension::BasicConstraints(bc) => {
                    seen.3 = true;
                    assert!(!bc.ca);
                }
                other => panic!("unexpected extension {other:?}"),
            }
        }
        assert_eq!(seen, (true, true, true, true));
        let subject = req.certification_request_info.subject.as_raw();
        let cert = self_signed(&key, &p).unwrap();
        assert_eq!(
            subject,
            x509(&cert).subject().as_raw(),
            "CSR and cert subjects agree"
        );
        // Tampering breaks the signature.
        let mut bad = der.clone();
        let i = bad.len() / 2;
        bad[i] ^= 1;
        if let Ok((_, r)) = X509CertificationRequest::from_der(&bad) {
            assert!(csr_signature_ok(&r, alg).is_err());
        }
    }
}

#[test]
fn issue_leaf_verifies_against_ca() {
    let ca_key = PrivateKey::generate(KeyAlg::Ec(Curve::P384)).unwrap();
    let ca = self_signed(&ca_key, &ca_params("CN=certvault local CA, O=certvault")).unwrap();
    for leaf_alg in [KeyAlg::Rsa(2048), KeyAlg::Ec(Curve::P256)] {
        let leaf_key = PrivateKey::generate(leaf_alg).unwrap();
        let mut p = params("CN=localhost");
        p.dns_names = vec!["localhost".into()];
        p.ip_addresses = vec![IpAddr::from([127, 0, 0, 1])];
        let leaf = issue(&ca_key, &ca, &leaf_key.public_key(), &p).unwrap();
        assert!(verify_signed_by(&leaf, &ca).unwrap());
        assert!(!verify_signed_by(&leaf, &leaf).unwrap());
        let info = parse_certificate(&leaf).unwrap();
        assert_eq!(info.issuer, "CN=certvault local CA, O=certvault");
        assert!(!info.self_issued && !info.is_ca);
        assert_eq!(info.public_key, leaf_key.public_key());
        // AKI of the leaf = SKI of the CA.
        let c = x509(&leaf);
        let cac = x509(&ca);
        use x509_parser::extensions::ParsedExtension;
        let aki = c
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
                _ => None,
            })
            .unwrap();
        let ski = cac
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(aki.0, ski.0);
        c.verify_signature(Some(cac.public_key())).unwrap();
    }
    // Wrong CA key, and a non-CA issuer.
    let other = PrivateKey::generate(KeyAlg::Ec(Curve::P384)).unwrap();
    let leaf_key = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    assert_eq!(
        issue(&other, &ca, &leaf_key.public_key(), &params("CN=x")).unwrap_err(),
        CryptoError::KeyMismatch
    );
    let not_ca = self_signed(&other, &params("CN=not a ca")).unwrap();
    assert!(matches!(
        issue(&other, &not_ca, &leaf_key.public_key(), &params("CN=x")),
        Err(CryptoError::BadParameter(_))
    ));
}

#[test]
fn openssl_verifies_issued_chain() {
    require_openssl();
    let dir = tempfile::tempdir().unwrap();
    let ca_key = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    let ca = self_signed(&ca_key, &ca_params("CN=Test CA")).unwrap();
    let leaf_key = rsa2048();
    let mut p = params("CN=www.example.com");
    p.ekus = vec!["1.3.6.1.5.5.7.3.1".into()];
    let leaf = issue(&ca_key, &ca, &leaf_key.public_key(), &p).unwrap();
    std::fs::write(dir.path().join("ca.pem"), to_pem(None, &[ca])).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), to_pem(None, &[leaf])).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            "ca.pem",
            "leaf.pem",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("leaf.pem: OK"));
    // And openssl accepts our CSR.
    let req = csr(&leaf_key, &full_params()).unwrap();
    std::fs::write(dir.path().join("req.der"), req).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-inform", "DER", "-in", "req.der", "-verify", "-noout", "-text",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("verify OK") || all.contains("self-signature ok"),
        "{all}"
    );
    assert!(all.contains("DNS:*.web.example.com"), "{all}");
}

#[test]
fn parse_openssl_fixture_certificates() {
    let leaf = fixture_cert("leaf.crt");
    let info = parse_certificate(&leaf).unwrap();
    assert_eq!(info.subject, "CN=leaf.example.com, O=Acme, C=US");
    assert_eq!(info.issuer, "CN=Fixture Intermediate CA, O=certvault tests");
    assert_eq!(
        info.dns_names,
        vec!["leaf.example.com", "*.leaf.example.com"]
    );
    assert_eq!(info.ip_addresses, vec!["192.0.2.10"]);
    assert_eq!(info.ekus, vec!["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]);
    assert_eq!(
        info.key_usage,
        vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment]
    );
    assert_eq!(info.public_key.alg(), KeyAlg::Rsa(2048));
    assert!(!info.is_ca && !info.self_issued);
    let ca = parse_certificate(&fixture_cert("ca.crt")).unwrap();
    assert!(ca.is_ca && ca.self_issued);
    assert!(verify_signed_by(&leaf, &fixture_cert("inter.crt")).unwrap());
    assert!(matches!(
        parse_certificate(b"junk"),
        Err(CryptoError::Malformed(_))
    ));
    let mut trailing = leaf;
    trailing.push(0);
    assert!(matches!(
        parse_certificate(&trailing),
        Err(CryptoError::Malformed(_))
    ));
}

fn names(certs: &[Vec<u8>]) -> Vec<String> {
    certs
        .iter()
        .map(|c| parse_certificate(c).unwrap().subject)
        .collect()
}

#[test]
fn order_chain_cases() {
    let leaf = fixture_cert("leaf.crt");
    let inter = fixture_cert("inter.crt");
    let ca = fixture_cert("ca.crt");
    let want = vec![leaf.clone(), inter.clone(), ca.clone()];
    let leaf_key = parse_pem(&fixture("leaf.key")).unwrap().key.unwrap();
    let perms = [
        vec![ca.clone(), leaf.clone(), inter.clone()],
        vec![inter.clone(), ca.clone(), leaf.clone()],
        vec![ca.clone(), inter.clone(), leaf.clone(), ca.clone()],
        want.clone(),
    ];
    for input in perms {
        assert_eq!(
            names(&order_chain(None, input.clone()).unwrap()),
            names(&want)
        );
        assert!(order_chain(Some(&leaf_key.public_key()), input).unwrap() == want);
    }
    // The key picks the leaf even when it is a CA certificate: the intermediate's key.
    let inter_key = parse_pem(&fixture("inter.key")).unwrap().key.unwrap();
    let got = order_chain(
        Some(&inter_key.public_key()),
        vec![ca.clone(), leaf.clone(), inter.clone()],
    )
    .unwrap();
    assert_eq!(
        names(&got),
        names(&[inter.clone(), ca.clone(), leaf.clone()])
    );
    // No matching key.
    let other = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    assert_eq!(
        order_chain(Some(&other.public_key()), want).unwrap_err(),
        CryptoError::KeyMismatch
    );
    // An unrelated certificate is kept after the chain; a gap is tolerated.
    let stray = self_signed(&other, &params("CN=stray")).unwrap();
    let got = order_chain(None, vec![ca.clone(), stray.clone(), leaf.clone()]).unwrap();
    assert_eq!(
        names(&got),
        names(&[leaf.clone(), ca.clone(), stray.clone()])
    );
    // Self-signed certificate alone, and a leaf with its own issuer missing.
    assert_eq!(order_chain(None, vec![stray.clone()]).unwrap(), vec![stray]);
    let got = order_chain(None, vec![ca.clone(), inter.clone()]).unwrap();
    assert_eq!(names(&got), names(&[inter, ca]));
    // Unparseable input.
    assert!(matches!(
        order_chain(None, vec![leaf, b"x".to_vec()]),
        Err(CryptoError::Malformed(_))
    ));
    assert!(order_chain(None, vec![]).unwrap().is_empty());
}

#[test]
fn order_chain_prefers_the_issuer_whose_signature_verifies() {
    // Two CAs with the same name (a re-keyed CA); only the second signed the leaf. P-521 keys
    // exercise the ecdsa-with-SHA512 verifier.
    let ca1_key = PrivateKey::generate(KeyAlg::Ec(Curve::P521)).unwrap();
    let ca2_key = PrivateKey::generate(KeyAlg::Ec(Curve::P521)).unwrap();
    let ca1 = self_signed(&ca1_key, &ca_params("CN=Same CA")).unwrap();
    let ca2 = self_signed(&ca2_key, &ca_params("CN=Same CA")).unwrap();
    let leaf_key = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    let leaf = issue(&ca2_key, &ca2, &leaf_key.public_key(), &params("CN=leaf")).unwrap();
    assert!(verify_signed_by(&leaf, &ca2).unwrap());
    assert!(!verify_signed_by(&leaf, &ca1).unwrap());
    assert!(verify_signed_by(&ca1, &ca1).unwrap());
    let got = order_chain(None, vec![ca1.clone(), leaf.clone(), ca2.clone()]).unwrap();
    assert!(got == vec![leaf.clone(), ca2.clone(), ca1.clone()]);
    let got = order_chain(
        Some(&leaf_key.public_key()),
        vec![ca2.clone(), ca1.clone(), leaf.clone()],
    )
    .unwrap();
    assert!(got == vec![leaf, ca2, ca1]);
}
