//! Key Vault key operations on certificate keys: sign/verify a digest, RSA encrypt/decrypt.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::rsa::{
    OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm, OaepPrivateDecryptingKey,
    OaepPublicEncryptingKey, Pkcs1PrivateDecryptingKey, Pkcs1PublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use aws_lc_rs::signature::{self, RsaEncoding, VerificationAlgorithm};
use certvault_core::policy::Curve;
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::error::label;
use crate::keys::{KeyAlg, PrivateKey, PublicKey};

/// JWS signature algorithms Key Vault offers for RSA and EC certificate keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt.
    PS256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384, 48-byte salt.
    PS384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512, 64-byte salt.
    PS512,
    /// ECDSA P-256 with SHA-256, raw `r‖s` (64 bytes).
    ES256,
    /// ECDSA P-384 with SHA-384, raw `r‖s` (96 bytes).
    ES384,
    /// ECDSA P-521 with SHA-512, raw `r‖s` (132 bytes).
    ES512,
}

impl SignAlg {
    /// All supported algorithms.
    pub const ALL: [SignAlg; 9] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::ES512,
    ];

    /// The wire spelling (`"RS256"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::ES512 => "ES512",
        }
    }

    /// Digest length in bytes the algorithm expects: 32, 48 or 64.
    pub fn digest_len(self) -> usize {
        self.digest_alg().output_len()
    }

    /// True for the RSA algorithms (RS*, PS*).
    pub fn is_rsa(self) -> bool {
        !self.is_ec()
    }

    /// True for the ECDSA algorithms (ES*).
    pub fn is_ec(self) -> bool {
        matches!(self, Self::ES256 | Self::ES384 | Self::ES512)
    }

    /// The curve an ES* algorithm requires.
    pub fn curve(self) -> Option<Curve> {
        match self {
            Self::ES256 => Some(Curve::P256),
            Self::ES384 => Some(Curve::P384),
            Self::ES512 => Some(Curve::P521),
            _ => None,
        }
    }

    fn digest_alg(self) -> &'static digest::Algorithm {
        match self {
            Self::RS256 | Self::PS256 | Self::ES256 => &digest::SHA256,
            Self::RS384 | Self::PS384 | Self::ES384 => &digest::SHA384,
            Self::RS512 | Self::PS512 | Self::ES512 => &digest::SHA512,
        }
    }

    /// Hashes `data` with this algorithm's hash: the digest that [`sign`] and [`verify`] take.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.digest_alg(), data).as_ref().to_vec()
    }
}

impl fmt::Display for SignAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SignAlg {
    type Err = CryptoError;

    /// Parses the exact, case-sensitive wire string.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                CryptoError::bad(format!(
                    "unsupported signature algorithm {} (supported: RS256 RS384 RS512 PS256 PS384 \
                 PS512 ES256 ES384 ES512)",
                    label(s)
                ))
            })
    }
}

/// RSA encryption algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncAlg {
    /// `RSA1_5`: RSAES-PKCS1-v1_5.
    Rsa15,
    /// `RSA-OAEP`: OAEP with SHA-1 and MGF1-SHA-1.
    RsaOaep,
    /// `RSA-OAEP-256`: OAEP with SHA-256 and MGF1-SHA-256.
    RsaOaep256,
}

impl EncAlg {
    /// All supported algorithms.
    pub const ALL: [EncAlg; 3] = [Self::Rsa15, Self::RsaOaep, Self::RsaOaep256];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rsa15 => "RSA1_5",
            Self::RsaOaep => "RSA-OAEP",
            Self::RsaOaep256 => "RSA-OAEP-256",
        }
    }

    /// The largest plaintext in bytes for a modulus of `modulus_len` bytes.
    pub fn max_plaintext_len(self, modulus_len: usize) -> usize {
        let overhead = match self {
            Self::Rsa15 => 11,
            Self::RsaOaep => 2 * 20 + 2,
            Self::RsaOaep256 => 2 * 32 + 2,
        };
        modulus_len.saturating_sub(overhead)
    }

    fn oaep(self) -> Option<&'static OaepAlgorithm> {
        match self {
            Self::Rsa15 => None,
            Self::RsaOaep => Some(&OAEP_SHA1_MGF1SHA1),
            Self::RsaOaep256 => Some(&OAEP_SHA256_MGF1SHA256),
        }
    }
}

impl fmt::Display for EncAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EncAlg {
    type Err = CryptoError;

    /// Parses the exact, case-sensitive wire string.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                CryptoError::bad(format!(
                    "unsupported encryption algorithm {} (supported: RSA1_5 RSA-OAEP RSA-OAEP-256)",
                    label(s)
                ))
            })
    }
}

/// Checks digest length and key/algorithm compatibility; returns the imported digest.
fn prepare(key_alg: KeyAlg, alg: SignAlg, digest: &[u8]) -> Result<Digest, CryptoError> {
    match (key_alg, alg.curve()) {
        (KeyAlg::Rsa(_), None) => {}
        (KeyAlg::Ec(c), Some(want)) if c == want => {}
        (KeyAlg::Ec(c), Some(want)) => {
            return Err(CryptoError::bad(format!(
                "{alg} requires a {} key, but this key is {}",
                want.as_str(),
                c.as_str()
            )));
        }
        (KeyAlg::Rsa(_), Some(_)) => {
            return Err(CryptoError::bad(format!(
                "{alg} requires an EC key, but this key is RSA"
            )));
        }
        (KeyAlg::Ec(_), None) => {
            return Err(CryptoError::bad(format!(
                "{alg} requires an RSA key, but this key is EC"
            )));
        }
    }
    if digest.len() != alg.digest_len() {
        return Err(CryptoError::bad(format!(
            "the digest for {alg} must be {} bytes, got {}",
            alg.digest_len(),
            digest.len()
        )));
    }
    Digest::import_less_safe(digest, alg.digest_alg())
        .map_err(|_| CryptoError::internal("could not import the digest"))
}

fn rsa_encoding(alg: SignAlg) -> &'static dyn RsaEncoding {
    match alg {
        SignAlg::RS256 => &signature::RSA_PKCS1_SHA256,
        SignAlg::RS384 => &signature::RSA_PKCS1_SHA384,
        SignAlg::RS512 => &signature::RSA_PKCS1_SHA512,
        SignAlg::PS256 => &signature::RSA_PSS_SHA256,
        SignAlg::PS384 => &signature::RSA_PSS_SHA384,
        _ => &signature::RSA_PSS_SHA512,
    }
}

fn verification_alg(alg: SignAlg) -> &'static dyn VerificationAlgorithm {
    match alg {
        SignAlg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        SignAlg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        SignAlg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        SignAlg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        SignAlg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        SignAlg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        SignAlg::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        SignAlg::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
        SignAlg::ES512 => &signature::ECDSA_P521_SHA512_FIXED,
    }
}

/// Signs a precomputed digest, Key Vault style.
///
/// `digest` must be 32/48/64 bytes for the SHA-256/384/512 algorithms. RS*: PKCS#1 v1.5 with
/// DigestInfo; PS*: PSS with MGF1 over the same hash and salt length = hash length; ES*: raw
/// `r‖s`, 64/96/132 bytes, and the curve must match (ES256–P-256, ES384–P-384, ES512–P-521).
/// Uses aws-lc-rs `sign_digest` with `Digest::import_less_safe` (no hand-built padding).
///
/// Errors: [`CryptoError::BadParameter`] for a wrong digest length or an algorithm that does
/// not fit the key.
pub fn sign(key: &PrivateKey, alg: SignAlg, digest: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let d = prepare(key.alg(), alg, digest)?;
    match key.alg() {
        KeyAlg::Rsa(_) => {
            let kp = key.rsa_key_pair()?;
            let mut sig = vec![0u8; kp.public_modulus_len()];
            kp.sign_digest(rsa_encoding(alg), &d, &mut sig)
                .map_err(|_| CryptoError::internal("RSA signing failed"))?;
            Ok(sig)
        }
        KeyAlg::Ec(curve) => {
            // `prepare` checked that the algorithm fits the key's curve. aws-lc signs in DER;
            // its fixed-width form goes through two BIGNUMs per signature, so the DER
            // `SEQUENCE { r, s }` is turned into `r‖s` here instead.
            let kp = key.ecdsa_asn1_key_pair()?;
            let sig = kp
                .sign_digest(&d)
                .map_err(|_| CryptoError::internal("ECDSA signing failed"))?;
            der_signature_to_fixed(sig.as_ref(), crate::keys::coord_len(curve)?)
                .ok_or_else(|| CryptoError::internal("ECDSA signing gave a malformed signature"))
        }
    }
}

/// An ECDSA signature `SEQUENCE { INTEGER r, INTEGER s }` as `r‖s`, each left-padded to
/// `width` bytes (JWS / Key Vault form). `None` when the DER is not that shape or a value is
/// wider than `width`.
fn der_signature_to_fixed(der: &[u8], width: usize) -> Option<Vec<u8>> {
    let (seq, rest) = crate::asn1::expect(der, crate::asn1::SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (r, rest) = crate::asn1::expect(seq.content, crate::asn1::INTEGER)?;
    let (s, rest) = crate::asn1::expect(rest, crate::asn1::INTEGER)?;
    if !rest.is_empty() {
        return None;
    }
    let mut out = vec![0u8; 2 * width];
    for (i, int) in [r.content, s.content].into_iter().enumerate() {
        let first = int.iter().position(|&b| b != 0).unwrap_or(int.len());
        let value = int.get(first..)?;
        if value.len() > width || int.first().is_some_and(|&b| b & 0x80 != 0) {
            return None;
        }
        out.get_mut(i * width + width - value.len()..(i + 1) * width)?
            .copy_from_slice(value);
    }
    Some(out)
}

/// Verifies a signature over a precomputed digest. `Ok(false)` for a wrong or malformed
/// signature; errors only for a wrong digest length or an algorithm that does not fit the key.
pub fn verify(
    key: &PublicKey,
    alg: SignAlg,
    digest: &[u8],
    sig: &[u8],
) -> Result<bool, CryptoError> {
    let d = prepare(key.alg(), alg, digest)?;
    let pk = signature::UnparsedPublicKey::new(verification_alg(alg), key.spki_der());
    Ok(pk.verify_digest(&d, sig).is_ok())
}

fn require_rsa(alg: KeyAlg, enc: EncAlg) -> Result<(), CryptoError> {
    if alg.is_rsa() {
        Ok(())
    } else {
        Err(CryptoError::bad(format!(
            "{enc} requires an RSA key, but this key is EC"
        )))
    }
}

/// Encrypts with an RSA public key (`RSA1_5`, `RSA-OAEP` = SHA-1, `RSA-OAEP-256`).
///
/// Errors: [`CryptoError::BadParameter`] for EC keys and for plaintexts longer than
/// [`EncAlg::max_plaintext_len`].
pub fn encrypt(key: &PublicKey, alg: EncAlg, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    require_rsa(key.alg(), alg)?;
    let pk = PublicEncryptingKey::from_der(key.spki_der())
        .map_err(|_| CryptoError::unsupported("this RSA key for encryption"))?;
    let modulus_len = pk.key_size_bytes();
    if plaintext.len() > alg.max_plaintext_len(modulus_len) {
        return Err(CryptoError::bad(format!(
            "plaintext too long for {alg} with this key: at most {} bytes",
            alg.max_plaintext_len(modulus_len)
        )));
    }
    let mut out = vec![0u8; modulus_len];
    let fail = |_| CryptoError::internal("RSA encryption failed");
    let len = match alg.oaep() {
        Some(oaep) => {
            let k = OaepPublicEncryptingKey::new(pk).map_err(fail)?;
            k.encrypt(oaep, plaintext, &mut out, None)
                .map_err(fail)?
                .len()
        }
        None => {
            let k = Pkcs1PublicEncryptingKey::new(pk).map_err(fail)?;
            k.encrypt(plaintext, &mut out).map_err(fail)?.len()
        }
    };
    out.truncate(len);
    Ok(out)
}

/// Decrypts with an RSA private key.
///
/// Errors: [`CryptoError::BadParameter`] for EC keys or a ciphertext whose length is not the
/// modulus length; [`CryptoError::Decrypt`] when decryption fails (wrong key, wrong algorithm,
/// corrupt ciphertext). Note that `RSA1_5` is inherently exposed to padding-oracle attacks;
/// it is offered because Key Vault offers it.
pub fn decrypt(
    key: &PrivateKey,
    alg: EncAlg,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    require_rsa(key.alg(), alg)?;
    let sk = PrivateDecryptingKey::from_pkcs8(key.pkcs8_der())
        .map_err(|_| CryptoError::internal("RSA key unusable"))?;
    let modulus_len = sk.key_size_bytes();
    if ciphertext.len() != modulus_len {
        return Err(CryptoError::bad(format!(
            "the ciphertext must be {modulus_len} bytes for this key, got {}",
            ciphertext.len()
        )));
    }
    let mut out = Zeroizing::new(vec![0u8; modulus_len]);
    let len = match alg.oaep() {
        Some(oaep) => {
            let k = OaepPrivateDecryptingKey::new(sk).map_err(|_| CryptoError::Decrypt)?;
            k.decrypt(oaep, ciphertext, &mut out, None)
                .map_err(|_| CryptoError::Decrypt)?
                .len()
        }
        None => {
            let k = Pkcs1PrivateDecryptingKey::new(sk).map_err(|_| CryptoError::Decrypt)?;
            k.decrypt(ciphertext, &mut out)
                .map_err(|_| CryptoError::Decrypt)?
                .len()
        }
    };
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::der_signature_to_fixed;

    #[test]
    fn der_signatures_become_fixed_width_or_are_refused() {
        // r = 0x01, s = 0x00ff (positive, high bit set, so DER adds a zero byte)
        let der = [0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0xff];
        let fixed = der_signature_to_fixed(&der, 4).unwrap();
        assert_eq!(fixed, [0, 0, 0, 1, 0, 0, 0, 0xff]);
        // a value wider than the field, a negative value, trailing bytes, wrong tags
        let wide = [0x30, 0x08, 0x02, 0x01, 0x01, 0x02, 0x03, 0x01, 0x02, 0x03];
        assert!(der_signature_to_fixed(&wide, 2).is_none());
        let negative = [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x80];
        assert!(der_signature_to_fixed(&negative, 4).is_none());
        let trailing = [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00];
        assert!(der_signature_to_fixed(&trailing, 4).is_none());
        let inner_trailing = [0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x05];
        assert!(der_signature_to_fixed(&inner_trailing, 4).is_none());
        let not_seq = [0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01];
        assert!(der_signature_to_fixed(&not_seq, 4).is_none());
        assert!(der_signature_to_fixed(&[], 4).is_none());
    }
}
