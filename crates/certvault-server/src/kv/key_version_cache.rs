//! Resolved key versions for the key operations (sign, verify, encrypt, decrypt, wrap,
//! unwrap), so that a key used many times is looked up, its public key parsed and its allowed
//! operations worked out once per store change epoch rather than on every request.
//!
//! The rules are those of [`super::secret_cache`]: the epoch is read before the store, any
//! committed write that may change objects advances it (on PostgreSQL replicas too, through
//! the change notifications), and an entry of an older epoch is never returned. What depends
//! on the request is checked on every hit: the permission (by the router), the version's
//! enabled flag and validity window against the request time, and the operation against the
//! key's allowed operations. Entries hold no private key material: the unsealed software key
//! stays in the bounded `key_cache`, HSM keys stay in the token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use certvault_crypto::PublicKey;
use certvault_store::{CertRecord, VersionRecord};

/// One resolved key version.
pub struct CachedKeyVersion {
    /// The certificate.
    pub cert: CertRecord,
    /// The version (with the sealed key, never the opened one).
    pub version: VersionRecord,
    /// The operations the key allows (wire names).
    pub key_ops: Vec<String>,
    /// The parsed public key.
    pub public: PublicKey,
}

/// The cache key: vault, name as requested (lower case), version as requested (lower case,
/// empty for the latest).
pub type KeyVersionKey = (i64, String, String);

/// The resolved key versions of the current epoch.
pub type KeyVersionCache = EpochCache<KeyVersionKey, CachedKeyVersion>;

/// A bounded map of values read in the current store epoch.
pub struct EpochCache<K, V> {
    inner: Mutex<Map<K, V>>,
    max_entries: usize,
}

struct Map<K, V> {
    epoch: u64,
    entries: HashMap<K, Arc<V>>,
}

impl<K, V> std::fmt::Debug for EpochCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EpochCache")
    }
}

impl<K: std::hash::Hash + Eq + Clone, V> EpochCache<K, V> {
    /// An empty cache of at most `max_entries` versions.
    pub fn new(max_entries: usize) -> Self {
        Self {
            inner: Mutex::new(Map {
                epoch: 0,
                entries: HashMap::new(),
            }),
            max_entries: max_entries.max(1),
        }
    }

    /// The entry for `key` if it was read in `epoch`.
    pub fn get(&self, key: &K, epoch: u64) -> Option<Arc<V>> {
        let map = self.inner.lock().ok()?;
        if map.epoch != epoch {
            return None;
        }
        map.entries.get(key).cloned()
    }

    /// Caches `entry`, read in `read_epoch`, unless a newer epoch has begun since
    /// (`current_epoch`); drops every entry of an older epoch, and an arbitrary entry when full.
    pub fn put(&self, key: K, entry: Arc<V>, read_epoch: u64, current_epoch: u64) {
        if read_epoch != current_epoch {
            return;
        }
        let Ok(mut map) = self.inner.lock() else {
            return;
        };
        if map.epoch != read_epoch {
            if map.epoch > read_epoch {
                return;
            }
            map.entries.clear();
            map.epoch = read_epoch;
        }
        if map.entries.len() >= self.max_entries
            && !map.entries.contains_key(&key)
            && let Some(victim) = map.entries.keys().next().cloned()
        {
            map.entries.remove(&victim);
        }
        map.entries.insert(key, entry);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Arc<String> {
        Arc::new(name.to_owned())
    }

    #[test]
    fn entries_live_for_one_epoch_and_the_size_is_bounded() {
        let c: EpochCache<KeyVersionKey, String> = EpochCache::new(2);
        let k = |n: &str| (1, n.to_owned(), String::new());
        c.put(k("a"), entry("a"), 5, 5);
        assert_eq!(c.get(&k("a"), 5).unwrap().as_str(), "a");
        assert!(c.get(&k("a"), 6).is_none(), "a newer epoch never sees it");
        // read before a change committed: not cached
        c.put(k("b"), entry("b"), 5, 6);
        assert!(c.get(&k("b"), 5).is_none());
        c.put(k("b"), entry("b"), 5, 5);
        c.put(k("c"), entry("c"), 5, 5);
        let held = ["a", "b", "c"]
            .iter()
            .filter(|n| c.get(&k(n), 5).is_some())
            .count();
        assert_eq!(held, 2, "bounded to two entries");
        // a new epoch drops the old entries
        c.put(k("d"), entry("d"), 7, 7);
        assert!(c.get(&k("b"), 7).is_none() && c.get(&k("c"), 7).is_none());
        assert!(c.get(&k("d"), 7).is_some());
        // an entry of an older epoch does not replace the newer map
        c.put(k("e"), entry("e"), 6, 6);
        assert!(c.get(&k("d"), 7).is_some() && c.get(&k("e"), 6).is_none());
    }
}
