//! Rendered managed secrets, so that repeated GETs of the same secret skip the store read, the
//! unsealing of the key and the PEM / PKCS#12 rendering.
//!
//! An entry is valid for one store change epoch ([`certvault_store::SqliteStore::epoch`]): the
//! epoch is read before the store, and any committed write that may change objects advances it,
//! so an entry never outlives a change to its certificate, its vault or anything else. Entries
//! of an old epoch are dropped on the next insert. What depends on the request is not cached:
//! the ids (they repeat the client's scheme, host and port) are written per request, and the
//! version's enabled flag and validity window are checked against the request time on every hit.
//!
//! The parts holding the secret value are [`Zeroizing`]: an evicted or replaced entry wipes
//! its copy of the key. The cache is bounded in bytes ([`SecretCache::new`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

/// One rendered secret version.
pub struct CachedSecret {
    /// The store epoch it was read in.
    pub epoch: u64,
    /// The certificate's name as stored (for the ids).
    pub name: String,
    /// The version (for the ids and the audit record).
    pub version: String,
    /// Whether the version is enabled.
    pub enabled: bool,
    /// Not before (Unix seconds).
    pub nbf: Option<i64>,
    /// Expires (Unix seconds).
    pub exp: Option<i64>,
    /// The body up to the `id` value: `{"attributes":…,"contentType":…,"id":`.
    pub head: Vec<u8>,
    /// The body after the `kid` value: `,"managed":true,"tags":…,"value":…}`.
    pub tail: Zeroizing<Vec<u8>>,
    /// The whole body for one request origin (the first one served; nearly every request of
    /// a deployment has the same), shared by the responses instead of copied into each. Its
    /// buffer is zeroed when the last response holding it is gone.
    pub body: std::sync::OnceLock<(String, bytes::Bytes)>,
}

impl CachedSecret {
    fn size(&self) -> usize {
        2 * (self.head.len() + self.tail.len()) + self.name.len() + self.version.len() + 128
    }
}

/// The cache key: vault, name key, requested version (empty for the latest) and output type.
pub type SecretKey = (i64, String, String, u8);

/// A bounded map of rendered secrets for the current epoch.
pub struct SecretCache {
    inner: Mutex<Map>,
    max_bytes: usize,
}

struct Map {
    epoch: u64,
    bytes: usize,
    entries: HashMap<SecretKey, Arc<CachedSecret>>,
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretCache")
    }
}

impl SecretCache {
    /// An empty cache holding at most about `max_bytes` of rendered secrets.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Map {
                epoch: 0,
                bytes: 0,
                entries: HashMap::new(),
            }),
            max_bytes,
        }
    }

    /// The entry for `key` if it was read in `epoch`.
    pub fn get(&self, key: &SecretKey, epoch: u64) -> Option<Arc<CachedSecret>> {
        let map = self.inner.lock().ok()?;
        if map.epoch != epoch {
            return None;
        }
        map.entries.get(key).cloned()
    }

    /// Caches `entry` unless a newer epoch has begun; drops every entry of an older epoch, and
    /// an arbitrary entry when the cache is full.
    pub fn put(&self, key: SecretKey, entry: CachedSecret, current_epoch: u64) {
        if entry.epoch != current_epoch {
            return;
        }
        let size = entry.size();
        if size > self.max_bytes / 4 {
            return;
        }
        let Ok(mut map) = self.inner.lock() else {
            return;
        };
        if map.epoch != entry.epoch {
            if map.epoch > entry.epoch {
                return;
            }
            map.entries.clear();
            map.bytes = 0;
            map.epoch = entry.epoch;
        }
        while map.bytes + size > self.max_bytes {
            let Some(victim) = map.entries.keys().next().cloned() else {
                break;
            };
            if let Some(old) = map.entries.remove(&victim) {
                map.bytes = map.bytes.saturating_sub(old.size());
            }
        }
        if let Some(old) = map.entries.insert(key, Arc::new(entry)) {
            map.bytes = map.bytes.saturating_sub(old.size());
        }
        map.bytes += size;
    }

    /// Entries and bytes held (for tests).
    pub fn usage(&self) -> (usize, usize) {
        self.inner
            .lock()
            .map(|m| (m.entries.len(), m.bytes))
            .unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: u64, value: &str) -> CachedSecret {
        CachedSecret {
            epoch,
            name: "web".into(),
            version: "v1".into(),
            enabled: true,
            nbf: None,
            exp: None,
            head: b"{".to_vec(),
            tail: Zeroizing::new(value.as_bytes().to_vec()),
            body: std::sync::OnceLock::new(),
        }
    }

    fn key(n: &str) -> SecretKey {
        (1, n.into(), String::new(), 0)
    }

    #[test]
    fn entries_live_for_one_epoch() {
        let c = SecretCache::new(1 << 20);
        c.put(key("a"), entry(5, "x"), 5);
        assert!(c.get(&key("a"), 5).is_some());
        assert!(
            c.get(&key("a"), 6).is_none(),
            "a later epoch must not see it"
        );
        // An entry read before a write that committed meanwhile is not cached.
        c.put(key("b"), entry(5, "y"), 6);
        assert!(c.get(&key("b"), 5).is_none());
        assert_eq!(c.usage().0, 1);
        // A newer epoch's entry drops the old ones.
        c.put(key("c"), entry(6, "z"), 6);
        assert!(c.get(&key("a"), 6).is_none());
        assert!(c.get(&key("c"), 6).is_some());
        assert_eq!(c.usage().0, 1);
        // An older epoch's entry never replaces newer ones.
        c.put(key("d"), entry(5, "w"), 5);
        assert!(c.get(&key("d"), 5).is_none());
    }

    #[test]
    fn bounded_in_bytes() {
        let c = SecretCache::new(64 * 1024);
        let big = "v".repeat(1000);
        for i in 0..500 {
            c.put(key(&format!("n{i}")), entry(1, &big), 1);
        }
        let (n, bytes) = c.usage();
        assert!(bytes <= 64 * 1024, "{bytes}");
        assert!(n > 10 && n < 500, "{n}");
    }
}
