//! The first-party plugins, compiled from `plugins/` by the build script and
//! embedded in the binary so they work with no extra step.

/// One embedded plugin.
#[derive(Debug, Clone, Copy)]
pub struct Bundled {
    /// Its source folder in the hearth repository (e.g. `plugins/calc`).
    pub source: &'static str,
    /// Its `plugin.toml`.
    pub manifest: &'static str,
    /// Its component bytes.
    pub component: &'static [u8],
}

/// Every bundled plugin.
pub const BUNDLED: &[Bundled] = include!(concat!(env!("OUT_DIR"), "/bundled.rs"));
