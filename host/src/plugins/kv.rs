//! The plugins' key-value store: one redb database, keys confined to the
//! plugin's namespace, with a per-call write buffer.
//!
//! A call's writes go to a [`KvTxn`] and reach the database in one atomic
//! commit only when the call returns normally (with a result or a typed tool
//! error). A trap, timeout or limit hit drops the buffer: a failed call has
//! no side effects on the store.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

const DATA: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("kv");
const USAGE: TableDefinition<'_, &str, u64> = TableDefinition::new("usage");

/// Longest key, in bytes.
pub const MAX_KEY: usize = 512;
/// Largest value, in bytes.
pub const MAX_VALUE: usize = 1 << 20;
/// Most bytes one namespace may store (keys plus values).
pub const NAMESPACE_QUOTA: u64 = 64 << 20;
/// Most distinct keys one call may write.
pub const MAX_WRITES_PER_CALL: usize = 1024;

/// Errors as the guest sees them.
pub use super::contract::latest::hearth::plugin::kv::Error as KvError;

/// The shared database, opened on first use so that commands which never
/// touch a key-value plugin do not take the database's lock.
#[derive(Clone)]
pub struct KvStore {
    path: Arc<Path>,
    db: Arc<Mutex<Option<Arc<Database>>>>,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore").finish_non_exhaustive()
    }
}

fn io(e: impl std::fmt::Display) -> KvError {
    KvError::Io(e.to_string())
}

impl KvStore {
    /// A store in `path`; the file is created or opened on first use.
    pub fn open(path: &Path) -> KvStore {
        KvStore {
            path: path.into(),
            db: Arc::new(Mutex::new(None)),
        }
    }

    fn db(&self) -> Result<Arc<Database>, KvError> {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| KvError::Io(format!("creating {}: {e}", parent.display())))?;
        }
        let db = Arc::new(
            Database::create(&self.path)
                .map_err(|e| KvError::Io(format!("opening {}: {e}", self.path.display())))?,
        );
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Starts the write buffer of one call for `namespace`.
    pub fn begin(&self, namespace: &str) -> KvTxn {
        KvTxn {
            store: self.clone(),
            namespace: namespace.to_string(),
            writes: BTreeMap::new(),
            delta: 0,
        }
    }

    fn read(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let txn = self.db()?.begin_read().map_err(io)?;
        let table = match txn.open_table(DATA) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        Ok(table
            .get((namespace, key))
            .map_err(io)?
            .map(|v| v.value().to_vec()))
    }

    fn keys(&self, namespace: &str, prefix: &str) -> Result<Vec<String>, KvError> {
        let txn = self.db()?.begin_read().map_err(io)?;
        let table = match txn.open_table(DATA) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let mut out = Vec::new();
        for entry in table.range((namespace, prefix)..).map_err(io)? {
            let (k, _) = entry.map_err(io)?;
            let (ns, key) = k.value();
            if ns != namespace || !key.starts_with(prefix) {
                break;
            }
            out.push(key.to_string());
        }
        Ok(out)
    }

    /// Bytes currently stored by `namespace`.
    pub fn usage(&self, namespace: &str) -> Result<u64, KvError> {
        let txn = self.db()?.begin_read().map_err(io)?;
        match txn.open_table(USAGE) {
            Ok(t) => Ok(t
                .get(namespace)
                .map_err(io)?
                .map(|v| v.value())
                .unwrap_or(0)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(io(e)),
        }
    }
}

/// One call's view of its namespace: reads see its own pending writes.
#[derive(Debug)]
pub struct KvTxn {
    store: KvStore,
    namespace: String,
    /// key → new value (`None`: deleted).
    writes: BTreeMap<String, Option<Vec<u8>>>,
    /// How many bytes the pending writes add to the namespace (may be negative).
    delta: i128,
}

fn entry_size(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

impl KvTxn {
    fn check_key(key: &str) -> Result<(), KvError> {
        if key.len() > MAX_KEY {
            return Err(KvError::TooLarge(format!(
                "key is {} bytes; the limit is {MAX_KEY}",
                key.len()
            )));
        }
        Ok(())
    }

    /// Reads a key.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Self::check_key(key)?;
        match self.writes.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => self.store.read(&self.namespace, key),
        }
    }

    fn note_write(&mut self, key: &str, value: Option<Vec<u8>>) -> Result<(), KvError> {
        if !self.writes.contains_key(key) && self.writes.len() >= MAX_WRITES_PER_CALL {
            return Err(KvError::TooLarge(format!(
                "one call may write at most {MAX_WRITES_PER_CALL} keys"
            )));
        }
        let old = self.get(key)?.map(|v| entry_size(key, &v)).unwrap_or(0) as i128;
        let new = value.as_ref().map(|v| entry_size(key, v)).unwrap_or(0) as i128;
        if new > old {
            let projected = self.store.usage(&self.namespace)? as i128 + self.delta + new - old;
            if projected > NAMESPACE_QUOTA as i128 {
                return Err(KvError::QuotaExceeded(format!(
                    "namespace `{}` would hold {projected} bytes; the quota is {NAMESPACE_QUOTA}",
                    self.namespace
                )));
            }
        }
        self.delta += new - old;
        self.writes.insert(key.to_string(), value);
        Ok(())
    }

    /// Buffers a write, checking size limits and the namespace quota.
    pub fn set(&mut self, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        Self::check_key(key)?;
        if value.len() > MAX_VALUE {
            return Err(KvError::TooLarge(format!(
                "value is {} bytes; the limit is {MAX_VALUE}",
                value.len()
            )));
        }
        self.note_write(key, Some(value))
    }

    /// Buffers a delete; returns whether the key existed.
    pub fn delete(&mut self, key: &str) -> Result<bool, KvError> {
        let existed = self.get(key)?.is_some();
        self.note_write(key, None)?;
        Ok(existed)
    }

    /// Keys starting with `prefix`, including this call's pending writes.
    pub fn list_keys(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        let mut keys: std::collections::BTreeSet<String> = self
            .store
            .keys(&self.namespace, prefix)?
            .into_iter()
            .collect();
        for (k, v) in self.writes.range(prefix.to_string()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(_) => keys.insert(k.clone()),
                None => keys.remove(k),
            };
        }
        Ok(keys.into_iter().collect())
    }

    /// Whether the call wrote anything.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Applies every buffered write in one atomic transaction. Blocking:
    /// call from a blocking thread.
    pub fn commit(self) -> Result<(), KvError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let txn = self.store.db()?.begin_write().map_err(io)?;
        {
            let mut data = txn.open_table(DATA).map_err(io)?;
            let mut usage_table = txn.open_table(USAGE).map_err(io)?;
            let mut usage = usage_table
                .get(self.namespace.as_str())
                .map_err(io)?
                .map(|v| v.value())
                .unwrap_or(0) as i128;
            for (key, value) in &self.writes {
                let old = match value {
                    Some(v) => data.insert((self.namespace.as_str(), key.as_str()), v.as_slice()),
                    None => data.remove((self.namespace.as_str(), key.as_str())),
                }
                .map_err(io)?;
                if let Some(old) = old {
                    usage -= entry_size(key, old.value()) as i128;
                }
                if let Some(v) = value {
                    usage += entry_size(key, v) as i128;
                }
            }
            usage_table
                .insert(self.namespace.as_str(), usage.max(0) as u64)
                .map_err(io)?;
        }
        txn.commit().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, KvStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = KvStore::open(&dir.path().join("kv.redb"));
        (dir, store)
    }

    #[test]
    fn writes_are_invisible_until_commit_and_confined_to_the_namespace() {
        let (_dir, store) = store();
        let mut a = store.begin("alpha");
        a.set("k", b"one".to_vec()).unwrap();
        assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(store.begin("alpha").get("k").unwrap(), None);
        a.commit().unwrap();
        assert_eq!(
            store.begin("alpha").get("k").unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(store.begin("beta").get("k").unwrap(), None);
        assert!(store.begin("beta").list_keys("").unwrap().is_empty());
    }

    #[test]
    fn dropped_transactions_leave_no_trace() {
        let (_dir, store) = store();
        let mut t = store.begin("a");
        t.set("k", b"v".to_vec()).unwrap();
        drop(t);
        assert_eq!(store.begin("a").get("k").unwrap(), None);
        assert_eq!(store.usage("a").unwrap(), 0);
    }

    #[test]
    fn lists_merge_pending_writes_and_deletes() {
        let (_dir, store) = store();
        let mut t = store.begin("a");
        for k in ["note:1", "note:2", "other"] {
            t.set(k, b"x".to_vec()).unwrap();
        }
        t.commit().unwrap();
        let mut t = store.begin("a");
        assert!(t.delete("note:1").unwrap());
        assert!(!t.delete("note:9").unwrap());
        t.set("note:3", b"y".to_vec()).unwrap();
        assert_eq!(t.list_keys("note:").unwrap(), vec!["note:2", "note:3"]);
        t.commit().unwrap();
        assert_eq!(
            store.begin("a").list_keys("").unwrap(),
            vec!["note:2", "note:3", "other"]
        );
        assert_eq!(store.usage("a").unwrap(), (6 + 1) * 2 + 5 + 1);
    }

    #[test]
    fn limits_are_enforced() {
        let (_dir, store) = store();
        let mut t = store.begin("a");
        assert!(matches!(
            t.set(&"k".repeat(MAX_KEY + 1), vec![]),
            Err(KvError::TooLarge(_))
        ));
        assert!(matches!(
            t.set("k", vec![0; MAX_VALUE + 1]),
            Err(KvError::TooLarge(_))
        ));
        for i in 0..MAX_WRITES_PER_CALL {
            t.set(&format!("k{i}"), vec![]).unwrap();
        }
        assert!(matches!(
            t.set("one-more", vec![]),
            Err(KvError::TooLarge(_))
        ));
    }

    #[test]
    fn quota_is_enforced_across_calls() {
        let (_dir, store) = store();
        let chunk = vec![0u8; MAX_VALUE];
        let per_call = 16;
        let mut stored = 0u64;
        'outer: for call in 0.. {
            let mut t = store.begin("a");
            for i in 0..per_call {
                match t.set(&format!("{call}-{i}"), chunk.clone()) {
                    Ok(()) => stored += chunk.len() as u64,
                    Err(KvError::QuotaExceeded(m)) => {
                        assert!(m.contains("quota"), "{m}");
                        t.commit().unwrap();
                        break 'outer;
                    }
                    Err(e) => panic!("{e:?}"),
                }
            }
            t.commit().unwrap();
        }
        assert!(store.usage("a").unwrap() <= NAMESPACE_QUOTA);
        assert!(stored > NAMESPACE_QUOTA - 2 * MAX_VALUE as u64);
    }
}
