//! Object names and version identifiers.

use std::fmt;

use crate::CoreError;

/// A certificate, key, secret, issuer or vault name: `^[0-9a-zA-Z-]{1,127}$`. Names are
/// matched case-insensitively ([`ObjectName::key`]) while the original spelling is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectName(String);

impl ObjectName {
    /// Parses and validates a name.
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        if s.is_empty()
            || s.len() > 127
            || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(CoreError::bad(format!(
                "The name '{}' is invalid: names are 1 to 127 characters of 0-9, a-z, A-Z and '-'.",
                truncate(s, 140)
            )));
        }
        Ok(Self(s.to_owned()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lookup key (lower case).
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A version id: 32 lowercase hex characters (a uuid4 without dashes), shared by a certificate
/// version and its key and secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(String);

impl VersionId {
    /// A new random version id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Parses a version id given by a client (case-insensitive).
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(CoreError::bad(format!(
                "Invalid version '{}'.",
                truncate(s, 64)
            )))
        }
    }

    /// The id as 32 lowercase hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Cuts a client-supplied string for inclusion in an error message.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(ObjectName::parse("web-1").is_ok());
        assert_eq!(
            ObjectName::parse("Web-1").map(|n| n.key()),
            Ok("web-1".to_owned())
        );
        for bad in ["", "a_b", "a.b", "é", &"a".repeat(128)] {
            assert!(ObjectName::parse(bad).is_err(), "{bad}");
        }
        assert!(ObjectName::parse(&"a".repeat(127)).is_ok());
    }

    #[test]
    fn versions() {
        let v = VersionId::generate();
        assert_eq!(v.as_str().len(), 32);
        assert_eq!(VersionId::parse(v.as_str()).as_ref(), Ok(&v));
        assert!(VersionId::parse("xyz").is_err());
        assert_eq!(
            VersionId::parse("ABCDEFABCDEFABCDEFABCDEFABCDEFAB").map(|v| v.as_str().to_owned()),
            Ok("abcdefabcdefabcdefabcdefabcdefab".to_owned())
        );
    }
}
