//! Following the installed set on disk: a running host reloads its active
//! set when `hearth plugin install|remove|enable|disable` change it beside
//! it.

use crate::home::Home;
use crate::plugins::Runtime;
use std::time::Duration;

/// Reloads the active plugin set whenever the installed set changes on
/// disk (`hearth plugin install|remove|enable|disable` run beside the
/// server), checking every `every`. Calls in flight finish on the old set.
pub fn watch_installed(runtime: Runtime, home: Home, every: Duration) {
    let lock = super::store::Store::new(&home).lock_path();
    // Written by replacing the file, so a change shows in any of these.
    let stamp = move || {
        std::fs::metadata(&lock).ok().map(|m| {
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let inode = 0u64;
            (m.modified().ok(), m.len(), inode)
        })
    };
    tokio::spawn(async move {
        let mut seen = stamp();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamp();
            if now == seen {
                continue;
            }
            seen = now;
            match super::reload(&runtime, &home).await {
                Ok(set) => tracing::info!(
                    active = ?set.resolution.order,
                    problems = set.resolution.problems.len(),
                    "installed plugins changed; reloaded"
                ),
                Err(e) => tracing::warn!("installed plugins changed; reloading failed: {e}"),
            }
        }
    });
}
