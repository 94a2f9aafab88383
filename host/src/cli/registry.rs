//! `hearth registry …`: publisher keys, trust, signed index entries.
//! (`--url`, talking to a running server, is `remote.rs`.)

use super::args::RegistryCommand;
use crate::home::Home;
use crate::manager::{self, registry};
use anyhow::Context;

/// Runs a `hearth registry` command; returns the process exit code.
pub(super) fn registry(home: &Home, command: RegistryCommand) -> anyhow::Result<i32> {
    match command {
        RegistryCommand::Keygen { out } => {
            let (id, public) = registry::keygen(&out).map_err(anyhow::Error::msg)?;
            println!(
                "key id: {id}\npublic key: {public}\nsecret key written to {}",
                out.display()
            );
            println!("users trust it with: hearth registry trust {public}");
            Ok(0)
        }
        RegistryCommand::Trust { public_key } => {
            let id = registry::TrustedKeys::add(home, &public_key).map_err(anyhow::Error::msg)?;
            println!("trusted key {id}");
            Ok(0)
        }
        RegistryCommand::Add {
            index,
            key,
            manifest,
            component,
            source,
            replace,
        } => {
            let key = registry::read_secret(&key).map_err(anyhow::Error::msg)?;
            let text = crate::home::read_text_capped(
                &manifest,
                crate::plugins::manifest::MAX_MANIFEST_BYTES,
            )
            .with_context(|| format!("reading {}", manifest.display()))?;
            let raw: crate::plugins::manifest::RawManifest =
                toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
            raw.clone().validate(&manifest.display().to_string())?;
            let bytes = crate::home::read_capped(&component, registry::MAX_COMPONENT_SIZE)
                .with_context(|| format!("reading {}", component.display()))?;
            let entry = registry::signed_entry(&key, &raw, &bytes, &source);
            let location = index.display().to_string();
            let text = registry::index_with(&index, &entry, replace)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("adding to {location}"))?;
            // The new index must parse, with the new entry in it, before it
            // replaces the old one (atomically): a failed add leaves the
            // index as it was.
            let parsed = registry::Index::parse(&text, &location, index.parent())?;
            manager::store::write_atomically(&index, text.as_bytes())
                .with_context(|| format!("writing {location}"))?;
            println!(
                "added {}@{} to {} ({} entries)",
                entry.namespace,
                entry.version,
                index.display(),
                parsed.entries.len()
            );
            Ok(0)
        }
    }
}
