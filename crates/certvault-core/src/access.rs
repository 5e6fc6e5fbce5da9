//! Access control: the Key Vault permission names, per object type, and access policies that
//! grant them to a principal in a vault.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// The object types permissions are granted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectType {
    /// Certificates, their policies, operations, issuers and contacts.
    Certificates,
    /// The keys of certificates.
    Keys,
    /// The secrets of certificates.
    Secrets,
}

impl ObjectType {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Certificates => "certificates",
            Self::Keys => "keys",
            Self::Secrets => "secrets",
        }
    }

    /// Every permission name valid for this object type, in Key Vault spelling.
    pub fn permission_names(self) -> &'static [&'static str] {
        match self {
            Self::Certificates => &[
                "get",
                "list",
                "update",
                "create",
                "import",
                "delete",
                "recover",
                "backup",
                "restore",
                "purge",
                "managecontacts",
                "getissuers",
                "listissuers",
                "setissuers",
                "deleteissuers",
                "manageissuers",
            ],
            Self::Keys => &[
                "get",
                "list",
                "update",
                "create",
                "import",
                "delete",
                "recover",
                "backup",
                "restore",
                "purge",
                "sign",
                "verify",
                "encrypt",
                "decrypt",
                "wrapKey",
                "unwrapKey",
            ],
            Self::Secrets => &[
                "get", "list", "set", "delete", "recover", "backup", "restore", "purge",
            ],
        }
    }

    /// All object types.
    pub const ALL: [Self; 3] = [Self::Certificates, Self::Keys, Self::Secrets];
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One permission: an object type and a Key Vault permission name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission {
    /// The object type.
    pub object: ObjectType,
    /// The permission name, in its canonical Key Vault spelling.
    pub name: &'static str,
}

impl Permission {
    /// Looks a permission up by object type and name (names compare case-insensitively).
    pub fn parse(object: ObjectType, name: &str) -> Result<Self, CoreError> {
        object
            .permission_names()
            .iter()
            .find(|n| n.eq_ignore_ascii_case(name))
            .map(|n| Self { object, name: n })
            .ok_or_else(|| {
                CoreError::bad(format!(
                    "'{}' is not a {} permission; valid: {}, or all.",
                    crate::names::truncate(name, 40),
                    object,
                    object.permission_names().join(", ")
                ))
            })
    }

    /// A permission known to exist; for the request router's table.
    pub const fn new(object: ObjectType, name: &'static str) -> Self {
        Self { object, name }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.object, self.name)
    }
}

/// The permissions a principal holds in one vault.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// Certificate permissions.
    #[serde(default)]
    pub certificates: BTreeSet<String>,
    /// Key permissions.
    #[serde(default)]
    pub keys: BTreeSet<String>,
    /// Secret permissions.
    #[serde(default)]
    pub secrets: BTreeSet<String>,
}

impl Permissions {
    /// Validates names given by an administrator and puts them in canonical spelling; `all`
    /// expands to every permission of the type. Certificate `manageissuers` implies the four
    /// issuer permissions.
    pub fn normalize(&self) -> Result<Self, CoreError> {
        let mut out = Self::default();
        for object in ObjectType::ALL {
            let src = self.list(object);
            let dst = out.list_mut(object);
            for name in src {
                if name.eq_ignore_ascii_case("all") {
                    dst.extend(object.permission_names().iter().map(|s| (*s).to_owned()));
                    continue;
                }
                let p = Permission::parse(object, name)?;
                dst.insert(p.name.to_owned());
                if object == ObjectType::Certificates && p.name == "manageissuers" {
                    for n in ["getissuers", "listissuers", "setissuers", "deleteissuers"] {
                        dst.insert(n.to_owned());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every permission.
    pub fn all() -> Self {
        let mut out = Self::default();
        for object in ObjectType::ALL {
            out.list_mut(object)
                .extend(object.permission_names().iter().map(|s| (*s).to_owned()));
        }
        out
    }

    fn list(&self, object: ObjectType) -> &BTreeSet<String> {
        match object {
            ObjectType::Certificates => &self.certificates,
            ObjectType::Keys => &self.keys,
            ObjectType::Secrets => &self.secrets,
        }
    }

    fn list_mut(&mut self, object: ObjectType) -> &mut BTreeSet<String> {
        match object {
            ObjectType::Certificates => &mut self.certificates,
            ObjectType::Keys => &mut self.keys,
            ObjectType::Secrets => &mut self.secrets,
        }
    }

    /// Whether `p` is granted (the set must be normalized).
    pub fn allows(&self, p: Permission) -> bool {
        self.list(p.object).contains(p.name)
    }

    /// True when nothing is granted.
    pub fn is_empty(&self) -> bool {
        ObjectType::ALL.iter().all(|o| self.list(*o).is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn normalize_and_allow() {
        let p = Permissions {
            certificates: set(&["Get", "manageissuers"]),
            keys: set(&["wrapkey", "SIGN"]),
            secrets: set(&["all"]),
        }
        .normalize()
        .unwrap();
        assert!(p.allows(Permission::new(ObjectType::Certificates, "get")));
        assert!(p.allows(Permission::new(ObjectType::Certificates, "setissuers")));
        assert!(!p.allows(Permission::new(ObjectType::Certificates, "list")));
        assert!(p.allows(Permission::new(ObjectType::Keys, "wrapKey")));
        assert!(p.allows(Permission::new(ObjectType::Keys, "sign")));
        assert!(!p.allows(Permission::new(ObjectType::Keys, "verify")));
        assert_eq!(p.secrets.len(), 8);
        assert!(
            Permissions {
                keys: set(&["set"]),
                ..Default::default()
            }
            .normalize()
            .is_err()
        );
        assert!(
            Permissions {
                secrets: set(&["sign"]),
                ..Default::default()
            }
            .normalize()
            .is_err()
        );
        assert_eq!(Permissions::all().certificates.len(), 16);
        assert!(Permissions::default().is_empty());
    }
}
