//! The plugins' key-value store on a Redis server, so that several hearth
//! replicas share their plugins' state: what one replica's call saved,
//! another's reads.
//!
//! The same semantics as the redb store (see [`super::kv`]): keys confined
//! to the namespace, the same size limits and the same usage accounting
//! ([`super::kv::ENTRY_OVERHEAD`] per entry), and a call's writes applied
//! all at once or not at all. A commit is one Lua script, which Redis runs
//! atomically: it reads the namespace's recorded usage, works out what the
//! writes change, refuses them all if that would pass the quota, and
//! otherwise applies them and records the new usage. Concurrent calls,
//! on one replica or several, are thereby serialised exactly as redb's
//! single write transaction serialises them.
//!
//! Layout: a namespace's entries are the hash `hearth:kv:<namespace>`
//! (field = key, value = value); usage is the field `<namespace>` of the
//! hash `hearth:kv-usage`. Pick the database with the URL's path
//! (`redis://host:6379/2`) to keep other data apart.

use super::kv::{ENTRY_OVERHEAD, KvError, NAMESPACE_QUOTA};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// How long connecting, and each command, may take: a Redis that stops
/// answering fails the plugin's store operation instead of holding its
/// call (and the thread it runs on) indefinitely.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Idle connections kept for reuse.
const POOL: usize = 16;

/// Applies one call's writes atomically. KEYS: the namespace's hash, the
/// usage hash. ARGV: namespace, quota, the per-entry charge beyond key and
/// value (the namespace's length plus the overhead), then one (op, key,
/// value) triple per write, op `s` (set) or `d` (delete). Returns
/// {1, usage} when applied, {0, usage it would have been} when refused.
const COMMIT: &str = r#"
local data, usage_key, ns = KEYS[1], KEYS[2], ARGV[1]
local quota, per = tonumber(ARGV[2]), tonumber(ARGV[3])
local before = tonumber(redis.call('HGET', usage_key, ns) or '0')
local usage = before
for i = 4, #ARGV, 3 do
  local key = ARGV[i + 1]
  if redis.call('HEXISTS', data, key) == 1 then
    usage = usage - (per + #key + redis.call('HSTRLEN', data, key))
  end
  if ARGV[i] == 's' then
    usage = usage + per + #key + #ARGV[i + 2]
  end
end
-- A call that only shrinks the namespace is let through even if it stays
-- over (a quota lowered since, say).
if usage > quota and usage > before then
  return {0, usage}
end
for i = 4, #ARGV, 3 do
  if ARGV[i] == 's' then
    redis.call('HSET', data, ARGV[i + 1], ARGV[i + 2])
  else
    redis.call('HDEL', data, ARGV[i + 1])
  end
end
if usage < 0 then usage = 0 end
redis.call('HSET', usage_key, ns, usage)
return {1, usage}
"#;

/// A Redis server holding the plugins' key-value data.
pub(super) struct RedisKv {
    client: redis::Client,
    /// Where the server is, for messages (the URL without credentials).
    server: String,
    idle: Mutex<Vec<redis::Connection>>,
    commit: redis::Script,
    /// As given (it may hold a password: never shown).
    #[cfg(test)]
    url: String,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl RedisKv {
    /// Connects to the server at `url` (`redis://[user:password@]host[:port][/db]`
    /// or `redis+unix:///path`), checking that it answers.
    pub(super) fn connect(url: &str) -> Result<RedisKv, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{e}"))?;
        let info = client.get_connection_info();
        let server = format!("{} (database {})", info.addr(), info.redis_settings().db());
        let kv = RedisKv {
            client,
            server,
            idle: Mutex::new(Vec::new()),
            commit: redis::Script::new(COMMIT),
            #[cfg(test)]
            url: url.to_string(),
        };
        kv.with(|c| redis::cmd("PING").query::<String>(c))
            .map_err(|e| match e {
                KvError::Io(m) => m,
                other => format!("{other:?}"),
            })?;
        Ok(kv)
    }

    /// Runs `f` on a pooled connection; a connection that failed is
    /// dropped rather than reused.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, KvError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut con = match pooled {
            Some(c) => c,
            None => {
                let c = self
                    .client
                    .get_connection_with_timeout(TIMEOUT)
                    .map_err(|e| self.error(e))?;
                c.set_read_timeout(Some(TIMEOUT))
                    .map_err(|e| self.error(e))?;
                c.set_write_timeout(Some(TIMEOUT))
                    .map_err(|e| self.error(e))?;
                c
            }
        };
        let result = f(&mut con).map_err(|e| self.error(e))?;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL {
            idle.push(con);
        }
        Ok(result)
    }

    fn error(&self, e: redis::RedisError) -> KvError {
        KvError::Io(format!("redis at {}: {e}", self.server))
    }

    /// The URL it was opened with, for a second store in tests.
    #[cfg(test)]
    pub(super) fn url_for_tests(&self) -> String {
        self.url.clone()
    }

    fn data_key(namespace: &str) -> String {
        format!("hearth:kv:{namespace}")
    }

    const USAGE: &'static str = "hearth:kv-usage";

    pub(super) fn read(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.with(|c| {
            redis::cmd("HGET")
                .arg(Self::data_key(namespace))
                .arg(key)
                .query(c)
        })
    }

    pub(super) fn keys(&self, namespace: &str, prefix: &str) -> Result<Vec<String>, KvError> {
        // A namespace holds at most its quota's worth of entries; their
        // names are fetched and filtered here rather than matched by a glob
        // pattern the prefix would have to be escaped for.
        let all: Vec<Vec<u8>> =
            self.with(|c| redis::cmd("HKEYS").arg(Self::data_key(namespace)).query(c))?;
        let mut keys: Vec<String> = all
            .into_iter()
            .filter(|k| k.starts_with(prefix.as_bytes()))
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect();
        keys.sort();
        Ok(keys)
    }

    pub(super) fn usage(&self, namespace: &str) -> Result<u64, KvError> {
        let usage: Option<u64> =
            self.with(|c| redis::cmd("HGET").arg(Self::USAGE).arg(namespace).query(c))?;
        Ok(usage.unwrap_or(0))
    }

    /// Applies `writes` (key → new value, `None` to delete) at once, or
    /// none of them when the namespace would pass its quota.
    pub(super) fn commit(
        &self,
        namespace: &str,
        writes: &BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<(), KvError> {
        let (applied, usage): (u8, i64) = self.with(|c| {
            let mut call = self.commit.prepare_invoke();
            call.key(Self::data_key(namespace))
                .key(Self::USAGE)
                .arg(namespace)
                .arg(NAMESPACE_QUOTA)
                .arg(namespace.len() as u64 + ENTRY_OVERHEAD);
            for (key, value) in writes {
                match value {
                    Some(v) => call.arg("s").arg(key).arg(v.as_slice()),
                    None => call.arg("d").arg(key).arg(""),
                };
            }
            call.invoke(c)
        })?;
        if applied == 1 {
            Ok(())
        } else {
            Err(super::kv::quota_exceeded(namespace, usage as i128))
        }
    }
}
