//! Key generation, import/export, public keys and JWKs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use certvault_crypto::{CryptoError, Curve, Jwk, KeyAlg, PrivateKey, PublicKey, parse_pem};
use common::*;

fn check_key(alg: KeyAlg) -> PrivateKey {
    let k = PrivateKey::generate(alg).unwrap();
    assert_eq!(k.alg(), alg);
    // PKCS#8 round trip yields the same key.
    let again = PrivateKey::from_pkcs8_der(k.pkcs8_der()).unwrap();
    assert_eq!(again.pkcs8_der(), k.pkcs8_der());
    assert_eq!(again.public_key(), k.public_key());
    let pk = k.public_key();
    assert_eq!(pk.alg(), alg);
    assert_eq!(PublicKey::from_spki_der(pk.spki_der()).unwrap(), pk);
    match (alg, pk.jwk()) {
        (KeyAlg::Rsa(bits), Jwk::Rsa { n, e }) => {
            assert_eq!(n.len() * 8, bits as usize);
            assert_ne!(n[0], 0, "n must not have a leading zero");
            assert!(n[0] & 0x80 != 0, "a {bits}-bit modulus fills its top byte");
            assert_eq!(e, vec![1, 0, 1]);
        }
        (KeyAlg::Ec(c), Jwk::Ec { crv, x, y }) => {
            assert_eq!(crv, c);
            let w = match c {
                Curve::P256 => 32,
                Curve::P384 => 48,
                _ => 66,
            };
            assert_eq!(x.len(), w);
            assert_eq!(y.len(), w);
        }
        other => panic!("JWK kind mismatch: {other:?}"),
    }
    k
}

#[test]
fn generate_rsa_2048_and_3072() {
    check_key(KeyAlg::Rsa(2048));
    check_key(KeyAlg::Rsa(3072));
}

#[test]
fn generate_rsa_4096() {
    check_key(KeyAlg::Rsa(4096));
}

#[test]
fn generate_ec_all_curves() {
    for c in [Curve::P256, Curve::P384, Curve::P521] {
        check_key(KeyAlg::Ec(c));
    }
}

#[test]
fn generate_refuses_bad_algorithms() {
    for bits in [1024, 2047, 2049, 8192] {
        assert!(matches!(
            PrivateKey::generate(KeyAlg::Rsa(bits)),
            Err(CryptoError::BadParameter(_))
        ));
    }
    let e = PrivateKey::generate(KeyAlg::Ec(Curve::P256K)).unwrap_err();
    assert!(matches!(e, CryptoError::Unsupported(_)), "{e:?}");
    assert!(e.to_string().contains("P-256K"));
}

#[test]
fn ec_jwk_keeps_leading_zero_bytes() {
    // Over many P-256 keys some coordinate starts with 0x00; it must stay fixed width.
    let mut saw_zero = false;
    for _ in 0..600 {
        let k = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
        let Jwk::Ec { x, y, .. } = k.public_key().jwk() else {
            panic!()
        };
        assert_eq!((x.len(), y.len()), (32, 32));
        saw_zero |= x[0] == 0 || y[0] == 0;
        if saw_zero {
            break;
        }
    }
    assert!(
        saw_zero,
        "600 keys without a leading zero byte is astronomically unlikely"
    );
}

#[test]
fn debug_is_redacted() {
    let k = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    assert_eq!(format!("{k:?}"), "[redacted]");
    assert_eq!(format!("{:?}", Some(k)), "Some([redacted])");
}

#[test]
fn import_pkcs8_pkcs1_sec1_fixtures() {
    let pkcs8 = parse_pem(&fixture("leaf.key")).unwrap().key.unwrap();
    let pkcs1 = parse_pem(&fixture("leaf-pkcs1.key")).unwrap().key.unwrap();
    assert_eq!(pkcs8.alg(), KeyAlg::Rsa(2048));
    assert_eq!(pkcs1.pkcs8_der(), pkcs8.pkcs8_der());
    let sec1 = parse_pem(&fixture("ec-sec1.key")).unwrap().key.unwrap();
    assert_eq!(sec1.alg(), KeyAlg::Ec(Curve::P384));
    let inter = parse_pem(&fixture("inter.key")).unwrap().key.unwrap();
    assert_eq!(inter.alg(), KeyAlg::Ec(Curve::P384));
    let ca = parse_pem(&fixture("ca.key")).unwrap().key.unwrap();
    assert_eq!(ca.alg(), KeyAlg::Ec(Curve::P256));
}

#[test]
fn import_rejects_garbage_and_foreign_keys() {
    assert!(matches!(
        PrivateKey::from_pkcs8_der(b"nope"),
        Err(CryptoError::Malformed(_))
    ));
    assert!(matches!(
        PublicKey::from_spki_der(b"\x30\x00"),
        Err(CryptoError::Malformed(_))
    ));
    // Ed25519 PKCS#8 (RFC 8410 example).
    let ed = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20, 0xd4, 0xee, 0x72, 0xdb, 0xf9, 0x13, 0x58, 0x4a, 0xd5, 0xb6, 0xd8, 0xf1, 0xf7, 0x69,
        0xf8, 0xad, 0x3a, 0xfe, 0x7c, 0x28, 0xcb, 0xf1, 0xd4, 0xfb, 0xe0, 0x97, 0xa8, 0x8f, 0x44,
        0x75, 0x58, 0x42,
    ];
    let e = PrivateKey::from_pkcs8_der(&ed).unwrap_err();
    assert!(matches!(e, CryptoError::Unsupported(_)), "{e:?}");
    // Truncated key.
    let k = rsa2048();
    let der = k.pkcs8_der();
    assert!(PrivateKey::from_pkcs8_der(&der[..der.len() - 10]).is_err());
}

#[test]
fn public_key_equality_is_canonical() {
    let k = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    let cert = certvault_crypto::self_signed(&k, &params("CN=x")).unwrap();
    let info = certvault_crypto::parse_certificate(&cert).unwrap();
    assert_eq!(info.public_key, k.public_key());
}
