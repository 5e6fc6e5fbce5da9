//! [`KeyRef`]: a stable, secret-free reference to a key in a token, stored in the database.

use std::fmt;
use std::str::FromStr;

use crate::HsmError;

/// Longest token label PKCS#11 allows (`CK_TOKEN_INFO.label`), in bytes.
const MAX_LABEL: usize = 32;
/// Longest `CKA_ID` accepted when parsing.
const MAX_ID: usize = 64;

/// A reference to a key in a PKCS#11 token: the token label plus the key's `CKA_ID`.
///
/// Its string form is an RFC 7512 PKCS#11 URI, `pkcs11:token=<label>;id=<%xx bytes>`, e.g.
/// `pkcs11:token=certvault;id=%5a%01%c3…`. The form is stable (store it in the database; it
/// parses back to an equal `KeyRef`), contains no secret, and the usual PKCS#11 tools
/// (`p11tool`, `pkcs11-tool --id`) understand it. The same reference names the private and the
/// public key object of a key pair (they share the `CKA_ID`), or an AES secret key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyRef {
    token: String,
    id: Vec<u8>,
}

impl KeyRef {
    /// Builds a reference from a token label and a `CKA_ID`.
    ///
    /// Errors: [`HsmError::BadKeyRef`] for an empty or over-long label (more than 32 bytes) or
    /// an empty or over-long id (more than 64 bytes).
    pub fn new(token: impl Into<String>, id: impl Into<Vec<u8>>) -> Result<Self, HsmError> {
        let token = token.into();
        let id = id.into();
        if token.is_empty() || token.len() > MAX_LABEL {
            return Err(HsmError::BadKeyRef(
                "the token label must be 1 to 32 bytes long".to_string(),
            ));
        }
        if id.is_empty() || id.len() > MAX_ID {
            return Err(HsmError::BadKeyRef(
                "the key id must be 1 to 64 bytes long".to_string(),
            ));
        }
        Ok(Self { token, id })
    }

    /// The token label.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The key's `CKA_ID`.
    pub fn id(&self) -> &[u8] {
        &self.id
    }
}

fn pct_encode(out: &mut String, bytes: &[u8], keep_unreserved: bool) {
    for &b in bytes {
        if keep_unreserved && (b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
}

fn pct_decode(s: &str) -> Result<Vec<u8>, HsmError> {
    let bad = || HsmError::BadKeyRef("bad percent-encoding".to_string());
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::from("pkcs11:token=");
        pct_encode(&mut s, self.token.as_bytes(), true);
        s.push_str(";id=");
        pct_encode(&mut s, &self.id, false);
        f.write_str(&s)
    }
}

impl FromStr for KeyRef {
    type Err = HsmError;

    /// Parses the [`Display`](fmt::Display) form. Accepts exactly the path attributes `token`
    /// and `id` (in any order, percent-encoded or not where RFC 7512 allows); anything else is
    /// refused so that a stored reference cannot silently mean something else.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| HsmError::BadKeyRef(why.to_string());
        let rest = s
            .strip_prefix("pkcs11:")
            .ok_or_else(|| bad("it must start with 'pkcs11:'"))?;
        if rest.contains('?') {
            return Err(bad("query attributes are not supported"));
        }
        let mut token = None;
        let mut id = None;
        for attr in rest.split(';') {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad("each attribute must be name=value"))?;
            let slot = match name {
                "token" => &mut token,
                "id" => &mut id,
                _ => return Err(bad("only the 'token' and 'id' attributes are supported")),
            };
            if slot.replace(pct_decode(value)?).is_some() {
                return Err(bad("an attribute appears twice"));
            }
        }
        let token = token.ok_or_else(|| bad("the 'token' attribute is missing"))?;
        let id = id.ok_or_else(|| bad("the 'id' attribute is missing"))?;
        let token = String::from_utf8(token).map_err(|_| bad("the token label is not UTF-8"))?;
        Self::new(token, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let k = KeyRef::new("certvault", vec![0x00, 0x5a, 0xff, 0x25]).unwrap();
        let s = k.to_string();
        assert_eq!(s, "pkcs11:token=certvault;id=%00%5a%ff%25");
        assert_eq!(s.parse::<KeyRef>().unwrap(), k);

        let odd = KeyRef::new("my token;x=%", vec![1]).unwrap();
        let s = odd.to_string();
        assert_eq!(s, "pkcs11:token=my%20token%3bx%3d%25;id=%01");
        assert_eq!(s.parse::<KeyRef>().unwrap(), odd);
    }

    #[test]
    fn parse_variants() {
        let k: KeyRef = "pkcs11:id=%01%02;token=abc".parse().unwrap();
        assert_eq!(k.token(), "abc");
        assert_eq!(k.id(), &[1, 2]);
        // Unencoded id bytes are allowed by RFC 7512.
        let k: KeyRef = "pkcs11:token=t;id=AB".parse().unwrap();
        assert_eq!(k.id(), b"AB");
    }

    #[test]
    fn parse_rejects() {
        for s in [
            "",
            "pkcs11:",
            "pkcs12:token=a;id=%01",
            "pkcs11:token=a",
            "pkcs11:id=%01",
            "pkcs11:token=;id=%01",
            "pkcs11:token=a;id=",
            "pkcs11:token=a;id=%0",
            "pkcs11:token=a;id=%zz",
            "pkcs11:token=a;id=%01;id=%02",
            "pkcs11:token=a;id=%01;object=x",
            "pkcs11:token=a;id=%01?pin-value=1234",
            "pkcs11:token=a;id",
            "pkcs11:token=%ff;id=%01",
            "pkcs11:token=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa;id=%01",
        ] {
            let e = s.parse::<KeyRef>().unwrap_err();
            assert!(matches!(e, HsmError::BadKeyRef(_)), "{s}: {e}");
        }
    }
}
