//! Software keys: generation, PKCS#8 import/export, public keys (SPKI) and JWK members.

use std::fmt;
use std::sync::{Arc, OnceLock};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _};
use certvault_core::policy::Curve;
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::asn1;

pub(crate) const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
pub(crate) const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_P521: &str = "1.3.132.0.35";
const OID_SECP256K1: &str = "1.3.132.0.10";
const OID_ED25519: &str = "1.3.101.112";
const OID_RSA_PSS: &str = "1.2.840.113549.1.1.10";

/// A key algorithm: RSA with a modulus size in bits, or ECDSA on a named curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// RSA. [`PrivateKey::generate`] accepts 2048, 3072 and 4096; imported keys report their
    /// actual modulus size (2048–8192 bits).
    Rsa(u32),
    /// ECDSA on P-256, P-384 or P-521. `P256K` (secp256k1) is refused for certificate keys.
    Ec(Curve),
}

impl KeyAlg {
    /// True for RSA keys.
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa(_))
    }

    /// True for EC keys.
    pub fn is_ec(self) -> bool {
        matches!(self, Self::Ec(_))
    }

    /// The RSA modulus size in bits, if RSA.
    pub fn rsa_bits(self) -> Option<u32> {
        match self {
            Self::Rsa(b) => Some(b),
            Self::Ec(_) => None,
        }
    }

    /// The curve, if EC.
    pub fn curve(self) -> Option<Curve> {
        match self {
            Self::Rsa(_) => None,
            Self::Ec(c) => Some(c),
        }
    }
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rsa(bits) => write!(f, "RSA-{bits}"),
            Self::Ec(c) => write!(f, "EC {}", c.as_str()),
        }
    }
}

/// Public key members for a JSON Web Key (RFC 7517/7518), as raw bytes; the caller base64url
/// encodes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jwk {
    /// `kty: RSA`.
    Rsa {
        /// Modulus, big-endian, without leading zero bytes.
        n: Vec<u8>,
        /// Public exponent, big-endian, without leading zero bytes (usually `01 00 01`).
        e: Vec<u8>,
    },
    /// `kty: EC`.
    Ec {
        /// The curve (`crv`).
        crv: Curve,
        /// X coordinate, fixed width (32, 48 or 66 bytes).
        x: Vec<u8>,
        /// Y coordinate, fixed width (32, 48 or 66 bytes).
        y: Vec<u8>,
    },
}

/// A public key: a canonical DER SubjectPublicKeyInfo plus its algorithm.
///
/// The SPKI is re-encoded canonically (RSA: `rsaEncryption` with NULL parameters; EC: named
/// curve, uncompressed point), so two `PublicKey`s for the same key compare equal even when the
/// inputs were encoded differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    spki: Vec<u8>,
    alg: KeyAlg,
    jwk: Jwk,
}

impl PublicKey {
    /// Parses a DER SubjectPublicKeyInfo (RSA or EC P-256/P-384/P-521).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        let bad = || CryptoError::malformed("public key (SubjectPublicKeyInfo)");
        let (outer, rest) = asn1::expect(der, asn1::SEQUENCE).ok_or_else(bad)?;
        if !rest.is_empty() {
            return Err(bad());
        }
        let (alg_id, rest) = asn1::expect(outer.content, asn1::SEQUENCE).ok_or_else(bad)?;
        let (bits, rest) = asn1::expect(rest, asn1::BIT_STRING).ok_or_else(bad)?;
        if !rest.is_empty() || bits.content.first() != Some(&0) {
            return Err(bad());
        }
        let key_bytes = &bits.content[1..];
        let (alg_oid, params) = asn1::expect(alg_id.content, asn1::OID).ok_or_else(bad)?;
        let alg_oid = asn1::oid_to_string(alg_oid.content).ok_or_else(bad)?;
        match alg_oid.as_str() {
            OID_RSA_ENCRYPTION => Self::rsa_from_pkcs1(key_bytes),
            OID_EC_PUBLIC_KEY => {
                let (curve_oid, _) = asn1::expect(params, asn1::OID)
                    .ok_or_else(|| CryptoError::unsupported("EC keys must use a named curve"))?;
                let curve = curve_from_oid(curve_oid.content)?;
                Self::ec_from_point(curve, key_bytes)
            }
            other => Err(unsupported_alg(other)),
        }
    }

    /// Builds a public key from RSA components: the modulus `n` and public exponent `e` as
    /// big-endian unsigned integers (leading zero bytes allowed), e.g. PKCS#11 `CKA_MODULUS`
    /// and `CKA_PUBLIC_EXPONENT`.
    pub fn from_rsa_components(n: &[u8], e: &[u8]) -> Result<Self, CryptoError> {
        Self::rsa_from_pkcs1(&asn1::seq(&[&asn1::uint(n), &asn1::uint(e)]))
    }

    /// Builds a public key from an uncompressed EC point (`04 ‖ x ‖ y`) on `curve` (P-256,
    /// P-384 or P-521), e.g. the contents of PKCS#11 `CKA_EC_POINT`. The point is checked to
    /// lie on the curve.
    pub fn from_ec_point(curve: Curve, point: &[u8]) -> Result<Self, CryptoError> {
        Self::ec_from_point(curve, point)
    }

    /// Builds the canonical public key from a PKCS#1 `RSAPublicKey`.
    fn rsa_from_pkcs1(pkcs1: &[u8]) -> Result<Self, CryptoError> {
        let bad = || CryptoError::malformed("RSA public key");
        let (seq, rest) = asn1::expect(pkcs1, asn1::SEQUENCE).ok_or_else(bad)?;
        if !rest.is_empty() {
            return Err(bad());
        }
        let (n, rest) = asn1::expect(seq.content, asn1::INTEGER).ok_or_else(bad)?;
        let (e, rest) = asn1::expect(rest, asn1::INTEGER).ok_or_else(bad)?;
        if !rest.is_empty() {
            return Err(bad());
        }
        let strip = |v: &[u8]| -> Vec<u8> {
            let skip = v.iter().take_while(|b| **b == 0).count();
            v[skip..].to_vec()
        };
        let n = strip(n.content);
        let e = strip(e.content);
        let first = *n.first().ok_or_else(bad)?;
        if e.is_empty() || e == [1] || e.len() > n.len() {
            return Err(bad());
        }
        if n.len() > 2048 {
            return Err(CryptoError::unsupported("RSA keys longer than 16384 bits"));
        }
        let bits = (n.len() as u32) * 8 - first.leading_zeros();
        let pkcs1 = asn1::seq(&[&asn1::uint(&n), &asn1::uint(&e)]);
        let alg_id = asn1::seq(&[&asn1::oid(OID_RSA_ENCRYPTION)?, &asn1::null()]);
        let spki = asn1::seq(&[&alg_id, &asn1::bit_string(&pkcs1)]);
        Ok(Self {
            spki,
            alg: KeyAlg::Rsa(bits),
            jwk: Jwk::Rsa { n, e },
        })
    }

    /// Builds the canonical public key from an EC point (uncompressed form required).
    fn ec_from_point(curve: Curve, point: &[u8]) -> Result<Self, CryptoError> {
        let w = coord_len(curve)?;
        match point.first() {
            Some(0x04) if point.len() == 1 + 2 * w => {}
            Some(0x02 | 0x03) => {
                return Err(CryptoError::unsupported("compressed EC public keys"));
            }
            _ => return Err(CryptoError::malformed("EC public key")),
        }
        // Validate that the point is on the curve.
        signature::UnparsedPublicKey::new(ecdsa_verify_alg(curve)?, point)
            .parse()
            .map_err(|_| CryptoError::malformed("EC public key (point not on curve)"))?;
        let alg_id = asn1::seq(&[
            &asn1::oid(OID_EC_PUBLIC_KEY)?,
            &asn1::oid(curve_oid(curve)?)?,
        ]);
        let spki = asn1::seq(&[&alg_id, &asn1::bit_string(point)]);
        Ok(Self {
            spki,
            alg: KeyAlg::Ec(curve),
            jwk: Jwk::Ec {
                crv: curve,
                x: point[1..1 + w].to_vec(),
                y: point[1 + w..].to_vec(),
            },
        })
    }

    /// The canonical DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The key algorithm.
    pub fn alg(&self) -> KeyAlg {
        self.alg
    }

    /// The JWK public members.
    pub fn jwk(&self) -> Jwk {
        self.jwk.clone()
    }

    /// The raw `subjectPublicKey` BIT STRING contents (PKCS#1 RSAPublicKey or EC point); used
    /// for key identifiers.
    pub(crate) fn subject_public_key_bits(&self) -> &[u8] {
        asn1::expect(&self.spki, asn1::SEQUENCE)
            .and_then(|(outer, _)| asn1::expect(outer.content, asn1::SEQUENCE))
            .and_then(|(_, rest)| asn1::expect(rest, asn1::BIT_STRING))
            .and_then(|(bits, _)| bits.content.get(1..))
            .unwrap_or(&[])
    }
}

/// A software private key, held as unencrypted PKCS#8 DER in zeroizing memory.
///
/// `Debug` prints `[redacted]`; the type deliberately does not implement `Serialize`,
/// `PartialEq` or `Display`.
///
/// The parsed aws-lc key pair is kept after first use, so a key held for many operations is
/// parsed (and, for RSA, checked) once. Clones share one copy (reference-counted): a key
/// handed to each request from a cache is not copied, and its PKCS#8 bytes are zeroed once,
/// when the last holder drops it.
#[derive(Clone)]
pub struct PrivateKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    pkcs8: Zeroizing<Vec<u8>>,
    public: PublicKey,
    parsed: Parsed,
}

/// Key pairs parsed on first use.
#[derive(Default)]
struct Parsed {
    rsa: OnceLock<RsaKeyPair>,
    /// ECDSA, DER signatures (X.509; Key Vault `sign` converts them to `r‖s`).
    ec_asn1: OnceLock<EcdsaKeyPair>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl PrivateKey {
    /// Generates a fresh key with aws-lc-rs. RSA sizes 2048/3072/4096; curves P-256/P-384/P-521.
    ///
    /// RSA generation is slow (RSA-2048 ≈ 50 ms, RSA-4096 ≈ 0.5 s median with a long tail of
    /// 1.5–2.5 s): call it from a blocking thread (`tokio::task::spawn_blocking`).
    pub fn generate(alg: KeyAlg) -> Result<Self, CryptoError> {
        match alg {
            KeyAlg::Rsa(bits) => {
                let size = match bits {
                    2048 => KeySize::Rsa2048,
                    3072 => KeySize::Rsa3072,
                    4096 => KeySize::Rsa4096,
                    _ => {
                        return Err(CryptoError::bad(
                            "RSA key size must be 2048, 3072 or 4096 bits",
                        ));
                    }
                };
                let kp = RsaKeyPair::generate(size)
                    .map_err(|_| CryptoError::internal("RSA key generation failed"))?;
                Self::from_rsa_key_pair(&kp)
            }
            KeyAlg::Ec(curve) => {
                let kp = EcdsaKeyPair::generate(ecdsa_signing_alg(curve)?)
                    .map_err(|_| CryptoError::internal("EC key generation failed"))?;
                Self::from_ec_key_pair(curve, &kp)
            }
        }
    }

    /// Imports an unencrypted PKCS#8 `PrivateKeyInfo` (RSA or EC P-256/P-384/P-521). The key is
    /// validated and re-encoded canonically.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CryptoError> {
        let bad = || CryptoError::malformed("private key (PKCS#8)");
        let (outer, _) = asn1::expect(der, asn1::SEQUENCE).ok_or_else(bad)?;
        let (_version, rest) = asn1::expect(outer.content, asn1::INTEGER).ok_or_else(bad)?;
        let (alg_id, _) = asn1::expect(rest, asn1::SEQUENCE).ok_or_else(bad)?;
        let (alg_oid, params) = asn1::expect(alg_id.content, asn1::OID).ok_or_else(bad)?;
        let alg_oid = asn1::oid_to_string(alg_oid.content).ok_or_else(bad)?;
        match alg_oid.as_str() {
            OID_RSA_ENCRYPTION => {
                let kp = RsaKeyPair::from_pkcs8(der).map_err(rsa_rejected)?;
                Self::from_rsa_key_pair(&kp)
            }
            OID_EC_PUBLIC_KEY => {
                let curves: Vec<Curve> = match asn1::expect(params, asn1::OID) {
                    Some((c, _)) => vec![curve_from_oid(c.content)?],
                    None => vec![Curve::P256, Curve::P384, Curve::P521],
                };
                for curve in curves {
                    if let Ok(kp) = EcdsaKeyPair::from_pkcs8(ecdsa_signing_alg(curve)?, der) {
                        return Self::from_ec_key_pair(curve, &kp);
                    }
                }
                Err(CryptoError::malformed("EC private key"))
            }
            other => Err(unsupported_alg(other)),
        }
    }

    /// Imports a PKCS#1 `RSAPrivateKey` (PEM label `RSA PRIVATE KEY`).
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self, CryptoError> {
        let kp = RsaKeyPair::from_der(der).map_err(rsa_rejected)?;
        Self::from_rsa_key_pair(&kp)
    }

    /// Imports a SEC1 / RFC 5915 `ECPrivateKey` (PEM label `EC PRIVATE KEY`).
    pub fn from_sec1_der(der: &[u8]) -> Result<Self, CryptoError> {
        // The curve is normally in the [0] parameters; if it is absent, try each curve.
        let curves = sec1_curve(der)?
            .map(|c| vec![c])
            .unwrap_or_else(|| vec![Curve::P256, Curve::P384, Curve::P521]);
        for curve in curves {
            if let Ok(kp) = EcdsaKeyPair::from_private_key_der(ecdsa_signing_alg(curve)?, der) {
                return Self::from_ec_key_pair(curve, &kp);
            }
        }
        Err(CryptoError::malformed("EC private key (SEC1)"))
    }

    fn from_rsa_key_pair(kp: &RsaKeyPair) -> Result<Self, CryptoError> {
        let pkcs8 = kp
            .as_der()
            .map_err(|_| CryptoError::internal("could not encode the RSA key"))?;
        let public = PublicKey::rsa_from_pkcs1(kp.public_key().as_ref())?;
        Ok(Self {
            inner: Arc::new(KeyInner {
                pkcs8: Zeroizing::new(pkcs8.as_ref().to_vec()),
                public,
                parsed: Parsed::default(),
            }),
        })
    }

    fn from_ec_key_pair(curve: Curve, kp: &EcdsaKeyPair) -> Result<Self, CryptoError> {
        let pkcs8 = kp
            .to_pkcs8v1()
            .map_err(|_| CryptoError::internal("could not encode the EC key"))?;
        let public = PublicKey::ec_from_point(curve, kp.public_key().as_ref())?;
        Ok(Self {
            inner: Arc::new(KeyInner {
                pkcs8: Zeroizing::new(pkcs8.as_ref().to_vec()),
                public,
                parsed: Parsed::default(),
            }),
        })
    }

    /// The unencrypted PKCS#8 DER. Handle with care.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.inner.pkcs8
    }

    /// The key algorithm.
    pub fn alg(&self) -> KeyAlg {
        self.inner.public.alg
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        self.inner.public.clone()
    }

    /// Borrowing variant of [`Self::public_key`].
    pub(crate) fn public_key_ref(&self) -> &PublicKey {
        &self.inner.public
    }

    pub(crate) fn rsa_key_pair(&self) -> Result<&RsaKeyPair, CryptoError> {
        if let Some(kp) = self.inner.parsed.rsa.get() {
            return Ok(kp);
        }
        let kp = RsaKeyPair::from_pkcs8(&self.inner.pkcs8)
            .map_err(|_| CryptoError::internal("RSA key unusable"))?;
        Ok(self.inner.parsed.rsa.get_or_init(|| kp))
    }

    /// The ECDSA key pair (DER signatures: X.509, and Key Vault `sign` after conversion).
    pub(crate) fn ecdsa_asn1_key_pair(&self) -> Result<&EcdsaKeyPair, CryptoError> {
        let KeyAlg::Ec(curve) = self.alg() else {
            return Err(CryptoError::internal("not an EC key"));
        };
        Self::cached_ec(
            &self.inner.parsed.ec_asn1,
            ecdsa_signing_alg(curve)?,
            &self.inner.pkcs8,
        )
    }

    fn cached_ec<'a>(
        cell: &'a OnceLock<EcdsaKeyPair>,
        alg: &'static EcdsaSigningAlgorithm,
        pkcs8: &[u8],
    ) -> Result<&'a EcdsaKeyPair, CryptoError> {
        if let Some(kp) = cell.get() {
            return Ok(kp);
        }
        let kp = EcdsaKeyPair::from_pkcs8(alg, pkcs8)
            .map_err(|_| CryptoError::internal("EC key unusable"))?;
        Ok(cell.get_or_init(|| kp))
    }

    /// Signs a message for an X.509 structure with the algorithm of [`KeyAlg::x509_sig_alg`]
    /// (ECDSA signatures DER-encoded).
    pub(crate) fn sign_x509(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self.alg() {
            KeyAlg::Rsa(_) => {
                let kp = self.rsa_key_pair()?;
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    msg,
                    &mut sig,
                )
                .map_err(|_| CryptoError::internal("RSA signing failed"))?;
                Ok(sig)
            }
            KeyAlg::Ec(_) => {
                let kp = self.ecdsa_asn1_key_pair()?;
                let sig = kp
                    .sign(&aws_lc_rs::rand::SystemRandom::new(), msg)
                    .map_err(|_| CryptoError::internal("ECDSA signing failed"))?;
                Ok(sig.as_ref().to_vec())
            }
        }
    }
}

impl KeyAlg {
    /// The X.509 signature AlgorithmIdentifier (DER) keys of this algorithm sign certificates
    /// with: sha256WithRSAEncryption for RSA, ecdsa-with-SHA256/384/512 for P-256/384/521.
    pub(crate) fn x509_sig_alg(self) -> Result<Vec<u8>, CryptoError> {
        match self {
            KeyAlg::Rsa(_) => Ok(asn1::seq(&[
                &asn1::oid("1.2.840.113549.1.1.11")?,
                &asn1::null(),
            ])),
            KeyAlg::Ec(curve) => {
                let oid = match curve {
                    Curve::P256 => "1.2.840.10045.4.3.2",
                    Curve::P384 => "1.2.840.10045.4.3.3",
                    Curve::P521 => "1.2.840.10045.4.3.4",
                    Curve::P256K => return Err(p256k_refused()),
                };
                Ok(asn1::seq(&[&asn1::oid(oid)?]))
            }
        }
    }
}

fn rsa_rejected(e: aws_lc_rs::error::KeyRejected) -> CryptoError {
    let d = e.description_();
    if d.contains("TooSmall") {
        CryptoError::unsupported("RSA keys shorter than 2048 bits")
    } else if d.contains("TooLarge") {
        CryptoError::unsupported("RSA keys longer than 8192 bits")
    } else {
        CryptoError::malformed("RSA private key")
    }
}

fn unsupported_alg(oid: &str) -> CryptoError {
    match oid {
        OID_ED25519 => CryptoError::unsupported("Ed25519 keys"),
        OID_RSA_PSS => CryptoError::unsupported("RSASSA-PSS-only keys (use rsaEncryption keys)"),
        _ => CryptoError::unsupported(format!("key algorithm {oid}")),
    }
}

fn p256k_refused() -> CryptoError {
    CryptoError::unsupported("curve P-256K (secp256k1) is not allowed for certificates")
}

/// Reads the curve from a SEC1 ECPrivateKey's `[0] parameters`, if present.
fn sec1_curve(der: &[u8]) -> Result<Option<Curve>, CryptoError> {
    let bad = || CryptoError::malformed("EC private key (SEC1)");
    let (outer, _) = asn1::expect(der, asn1::SEQUENCE).ok_or_else(bad)?;
    let items = asn1::children(outer.content).ok_or_else(bad)?;
    for item in items {
        if item.tag == asn1::ctx_cons(0) {
            let (oid, _) = asn1::expect(item.content, asn1::OID).ok_or_else(bad)?;
            return curve_from_oid(oid.content).map(Some);
        }
    }
    Ok(None)
}

pub(crate) fn curve_from_oid(content: &[u8]) -> Result<Curve, CryptoError> {
    let s =
        asn1::oid_to_string(content).ok_or_else(|| CryptoError::malformed("curve identifier"))?;
    match s.as_str() {
        OID_P256 => Ok(Curve::P256),
        OID_P384 => Ok(Curve::P384),
        OID_P521 => Ok(Curve::P521),
        OID_SECP256K1 => Err(p256k_refused()),
        other => Err(CryptoError::unsupported(format!("elliptic curve {other}"))),
    }
}

fn curve_oid(curve: Curve) -> Result<&'static str, CryptoError> {
    match curve {
        Curve::P256 => Ok(OID_P256),
        Curve::P384 => Ok(OID_P384),
        Curve::P521 => Ok(OID_P521),
        Curve::P256K => Err(p256k_refused()),
    }
}

/// Coordinate width in bytes for a curve.
pub(crate) fn coord_len(curve: Curve) -> Result<usize, CryptoError> {
    match curve {
        Curve::P256 => Ok(32),
        Curve::P384 => Ok(48),
        Curve::P521 => Ok(66),
        Curve::P256K => Err(p256k_refused()),
    }
}

fn ecdsa_signing_alg(curve: Curve) -> Result<&'static EcdsaSigningAlgorithm, CryptoError> {
    match curve {
        Curve::P256 => Ok(&signature::ECDSA_P256_SHA256_ASN1_SIGNING),
        Curve::P384 => Ok(&signature::ECDSA_P384_SHA384_ASN1_SIGNING),
        Curve::P521 => Ok(&signature::ECDSA_P521_SHA512_ASN1_SIGNING),
        Curve::P256K => Err(p256k_refused()),
    }
}

fn ecdsa_verify_alg(
    curve: Curve,
) -> Result<&'static signature::EcdsaVerificationAlgorithm, CryptoError> {
    match curve {
        Curve::P256 => Ok(&signature::ECDSA_P256_SHA256_ASN1),
        Curve::P384 => Ok(&signature::ECDSA_P384_SHA384_ASN1),
        Curve::P521 => Ok(&signature::ECDSA_P521_SHA512_ASN1),
        Curve::P256K => Err(p256k_refused()),
    }
}
