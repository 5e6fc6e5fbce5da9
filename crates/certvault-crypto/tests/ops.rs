//! Key Vault key operations: sign/verify over digests, RSA encrypt/decrypt.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use certvault_crypto::*;
use common::*;

fn digest_for(alg: SignAlg, msg: &[u8]) -> Vec<u8> {
    use aws_lc_rs::digest;
    let a = match alg.digest_len() {
        32 => &digest::SHA256,
        48 => &digest::SHA384,
        _ => &digest::SHA512,
    };
    digest::digest(a, msg).as_ref().to_vec()
}

struct Keys {
    rsa: PrivateKey,
    p256: PrivateKey,
    p384: PrivateKey,
    p521: PrivateKey,
}

fn keys() -> Keys {
    Keys {
        rsa: rsa2048(),
        p256: PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap(),
        p384: PrivateKey::generate(KeyAlg::Ec(Curve::P384)).unwrap(),
        p521: PrivateKey::generate(KeyAlg::Ec(Curve::P521)).unwrap(),
    }
}

fn key_for(k: &Keys, alg: SignAlg) -> &PrivateKey {
    match alg {
        SignAlg::ES256 => &k.p256,
        SignAlg::ES384 => &k.p384,
        SignAlg::ES512 => &k.p521,
        _ => &k.rsa,
    }
}

#[test]
fn wire_names() {
    for a in SignAlg::ALL {
        assert_eq!(a.as_str().parse::<SignAlg>().unwrap(), a);
        assert_eq!(a.to_string(), a.as_str());
    }
    for a in EncAlg::ALL {
        assert_eq!(a.as_str().parse::<EncAlg>().unwrap(), a);
    }
    assert_eq!("RSA1_5".parse::<EncAlg>().unwrap(), EncAlg::Rsa15);
    assert_eq!("RSA-OAEP".parse::<EncAlg>().unwrap(), EncAlg::RsaOaep);
    assert_eq!(
        "RSA-OAEP-256".parse::<EncAlg>().unwrap(),
        EncAlg::RsaOaep256
    );
    for bad in ["rs256", "RSNULL", "ES256K", "HS256", "", "RS256 "] {
        let e = bad.parse::<SignAlg>().unwrap_err();
        assert!(matches!(e, CryptoError::BadParameter(_)), "{bad}");
    }
    for bad in ["rsa-oaep", "A256KW", "RSA-OAEP-384"] {
        assert!(
            matches!(bad.parse::<EncAlg>(), Err(CryptoError::BadParameter(_))),
            "{bad}"
        );
    }
    assert_eq!(SignAlg::ES512.digest_len(), 64);
    assert_eq!(SignAlg::PS384.digest_len(), 48);
}

#[test]
fn sign_verify_every_algorithm() {
    let k = keys();
    for alg in SignAlg::ALL {
        let key = key_for(&k, alg);
        let d = digest_for(alg, b"hello key vault");
        let sig = sign(key, alg, &d).unwrap();
        let want_len = match alg {
            SignAlg::ES256 => 64,
            SignAlg::ES384 => 96,
            SignAlg::ES512 => 132,
            _ => 256,
        };
        assert_eq!(sig.len(), want_len, "{alg}");
        let pk = key.public_key();
        assert!(verify(&pk, alg, &d, &sig).unwrap(), "{alg}");
        // Tampered signature and tampered digest → Ok(false).
        let mut bad = sig.clone();
        bad[want_len / 2] ^= 0x40;
        assert!(!verify(&pk, alg, &d, &bad).unwrap(), "{alg}");
        let mut d2 = d.clone();
        d2[0] ^= 1;
        assert!(!verify(&pk, alg, &d2, &sig).unwrap(), "{alg}");
        assert!(
            !verify(&pk, alg, &d, &sig[..sig.len() - 1]).unwrap(),
            "{alg}"
        );
        assert!(!verify(&pk, alg, &d, &[]).unwrap(), "{alg}");
        // The message-based aws-lc-rs verifier agrees that this signs the message.
        if alg.is_rsa() {
            use aws_lc_rs::signature as s;
            let v: &dyn s::VerificationAlgorithm = match alg {
                SignAlg::RS256 => &s::RSA_PKCS1_2048_8192_SHA256,
                SignAlg::RS384 => &s::RSA_PKCS1_2048_8192_SHA384,
                SignAlg::RS512 => &s::RSA_PKCS1_2048_8192_SHA512,
                SignAlg::PS256 => &s::RSA_PSS_2048_8192_SHA256,
                SignAlg::PS384 => &s::RSA_PSS_2048_8192_SHA384,
                _ => &s::RSA_PSS_2048_8192_SHA512,
            };
            s::UnparsedPublicKey::new(v, pk.spki_der())
                .verify(b"hello key vault", &sig)
                .unwrap();
        }
    }
}

#[test]
fn sign_rejects_bad_digest_length_and_mismatched_algorithms() {
    let k = keys();
    for alg in SignAlg::ALL {
        let key = key_for(&k, alg);
        for len in [0, 20, 31, 33, 47, 63, 65] {
            if len == alg.digest_len() {
                continue;
            }
            let e = sign(key, alg, &vec![7u8; len]).unwrap_err();
            assert!(matches!(e, CryptoError::BadParameter(_)), "{alg} {len}");
            assert!(
                e.to_string()
                    .contains(&format!("{} bytes", alg.digest_len())),
                "{e}"
            );
            let e = verify(&key.public_key(), alg, &vec![7u8; len], &[0; 64]).unwrap_err();
            assert!(matches!(e, CryptoError::BadParameter(_)));
        }
    }
    let d32 = [1u8; 32];
    let d48 = [1u8; 48];
    let d64 = [1u8; 64];
    let cases: Vec<(&PrivateKey, SignAlg, &[u8])> = vec![
        (&k.rsa, SignAlg::ES256, &d32),
        (&k.p256, SignAlg::RS256, &d32),
        (&k.p256, SignAlg::PS256, &d32),
        (&k.p256, SignAlg::ES384, &d48),
        (&k.p384, SignAlg::ES256, &d32),
        (&k.p384, SignAlg::ES512, &d64),
        (&k.p521, SignAlg::ES384, &d48),
    ];
    for (key, alg, d) in cases {
        let e = sign(key, alg, d).unwrap_err();
        assert!(matches!(e, CryptoError::BadParameter(_)), "{alg}: {e:?}");
        let e = verify(&key.public_key(), alg, d, &[0; 64]).unwrap_err();
        assert!(matches!(e, CryptoError::BadParameter(_)), "{alg}: {e:?}");
    }
    let e = sign(&k.p384, SignAlg::ES256, &d32).unwrap_err().to_string();
    assert!(e.contains("P-256") && e.contains("P-384"), "{e}");
}

#[test]
fn signatures_interoperate_with_python_cryptography() {
    require_python_cryptography();
    // What the Azure SDK's local CryptographyClient does: PSS with salt = digest length, and
    // ECDSA r||s re-encoded as DER, both over a prehashed digest.
    let k = keys();
    let mut lines = String::new();
    for alg in SignAlg::ALL {
        let key = key_for(&k, alg);
        let d = digest_for(alg, alg.as_str().as_bytes());
        let sig = sign(key, alg, &d).unwrap();
        lines.push_str(&format!(
            "{} {} {} {}\n",
            alg,
            hex(key.public_key().spki_der()),
            hex(&d),
            hex(&sig)
        ));
    }
    let script = r#"
import sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, ec, utils
H = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
for line in sys.stdin.read().split("\n"):
    if not line: continue
    alg, spki, d, sig = line.split()
    pk = serialization.load_der_public_key(bytes.fromhex(spki))
    d, sig = bytes.fromhex(d), bytes.fromhex(sig)
    h = H[alg[2:]]
    pre = utils.Prehashed(h)
    if alg.startswith("RS"):
        pk.verify(sig, d, padding.PKCS1v15(), pre)
    elif alg.startswith("PS"):
        pk.verify(sig, d, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), pre)
    else:
        n = len(sig) // 2
        r, s = int.from_bytes(sig[:n], "big"), int.from_bytes(sig[n:], "big")
        pk.verify(utils.encode_dss_signature(r, s), d, ec.ECDSA(pre))
    print("ok", alg)
"#;
    let (ok, out) = python(script, lines.as_bytes());
    assert!(ok, "{out}");
    assert_eq!(out.matches("ok ").count(), 9, "{out}");
}

#[test]
fn encrypt_decrypt_all_rsa_algorithms() {
    let k = rsa2048();
    let pk = k.public_key();
    for alg in EncAlg::ALL {
        for msg in [
            &b""[..],
            b"a",
            &[0x5a; 32],
            &vec![9u8; alg.max_plaintext_len(256)],
        ] {
            let ct = encrypt(&pk, alg, msg).unwrap();
            assert_eq!(ct.len(), 256);
            let pt = decrypt(&k, alg, &ct).unwrap();
            assert_eq!(&pt[..], msg, "{alg}");
        }
        // Too long.
        let too_long = vec![1u8; alg.max_plaintext_len(256) + 1];
        assert!(matches!(
            encrypt(&pk, alg, &too_long),
            Err(CryptoError::BadParameter(_))
        ));
        // Wrong ciphertext length, corrupted ciphertext.
        let ct = encrypt(&pk, alg, b"secret").unwrap();
        assert!(matches!(
            decrypt(&k, alg, &ct[1..]),
            Err(CryptoError::BadParameter(_))
        ));
        let mut bad = ct.clone();
        bad[10] ^= 1;
        match decrypt(&k, alg, &bad) {
            Err(CryptoError::Decrypt) => {}
            Ok(pt) => assert_ne!(&pt[..], b"secret"),
            Err(e) => panic!("{alg}: {e:?}"),
        }
    }
    // OAEP variants do not cross-decrypt.
    let ct = encrypt(&pk, EncAlg::RsaOaep256, b"x").unwrap();
    assert_eq!(
        decrypt(&k, EncAlg::RsaOaep, &ct).unwrap_err(),
        CryptoError::Decrypt
    );
    // Max sizes per the RFCs.
    assert_eq!(EncAlg::Rsa15.max_plaintext_len(256), 245);
    assert_eq!(EncAlg::RsaOaep.max_plaintext_len(256), 214);
    assert_eq!(EncAlg::RsaOaep256.max_plaintext_len(256), 190);
}

#[test]
fn encryption_refuses_ec_keys() {
    let k = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    for alg in EncAlg::ALL {
        assert!(matches!(
            encrypt(&k.public_key(), alg, b"x"),
            Err(CryptoError::BadParameter(_))
        ));
        assert!(matches!(
            decrypt(&k, alg, &[0; 64]),
            Err(CryptoError::BadParameter(_))
        ));
    }
}

#[test]
fn oaep_interoperates_with_python_cryptography() {
    require_python_cryptography();
    let k = rsa2048();
    let mut input = hex(k.public_key().spki_der());
    input.push('\n');
    for alg in EncAlg::ALL {
        input.push_str(&hex(&encrypt(
            &k.public_key(),
            alg,
            alg.as_str().as_bytes(),
        )
        .unwrap()));
        input.push('\n');
    }
    let pem = to_pem(Some(&k), &[]);
    let script = format!(
        r#"
import sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
lines = sys.stdin.read().split()
sk = serialization.load_pem_private_key({pem:?}.encode(), None)
pads = [padding.PKCS1v15(),
        padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)]
for ct, p in zip(lines[1:], pads):
    print(sk.decrypt(bytes.fromhex(ct), p).decode())
"#
    );
    let (ok, out) = python(&script, input.as_bytes());
    assert!(ok, "{out}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        vec!["RSA1_5", "RSA-OAEP", "RSA-OAEP-256"]
    );
}

/// ECDSA `r‖s` is built from aws-lc's DER signature: every width and every leading-zero case
/// (a value one or more bytes shorter than the field, about 1 in 128 signatures per value)
/// must come out right. aws-lc-rs's own fixed-width verifier over the message checks it.
#[test]
fn ecdsa_fixed_signatures_verify_across_many_nonces() {
    use aws_lc_rs::signature as s;
    let k = keys();
    for (alg, rounds, verifier) in [
        (
            SignAlg::ES256,
            1500,
            &s::ECDSA_P256_SHA256_FIXED as &dyn s::VerificationAlgorithm,
        ),
        (SignAlg::ES384, 400, &s::ECDSA_P384_SHA384_FIXED),
        (SignAlg::ES512, 300, &s::ECDSA_P521_SHA512_FIXED),
    ] {
        let key = key_for(&k, alg);
        let pk = key.public_key();
        let mut short = 0;
        for i in 0..rounds {
            let msg = format!("message {i}");
            let d = digest_for(alg, msg.as_bytes());
            let sig = sign(key, alg, &d).unwrap();
            let half = sig.len() / 2;
            if sig[0] == 0 || sig[half] == 0 {
                short += 1;
            }
            s::UnparsedPublicKey::new(verifier, pk.spki_der())
                .verify(msg.as_bytes(), &sig)
                .unwrap_or_else(|_| panic!("{alg} signature {i} does not verify"));
        }
        assert!(
            short > 0,
            "{alg}: no signature with a leading zero byte in {rounds}"
        );
    }
}
