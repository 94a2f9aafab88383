//! The versioned plugin contract: which `hearth:plugin` versions this host
//! speaks, how a component's stamp is read, and which imports need which
//! grant.
//!
//! One bindings module per contract version lives in [`v0_1`]; [`latest`] is
//! what the rest of the host uses. When 0.2 arrives it gets its own module
//! and older components are converted at this boundary.

use semver::{Version, VersionReq};
use wasmparser::{Parser, Payload};

/// Host bindings for `hearth:plugin@0.1.x`, generated from `wit/v0.1.0`.
#[allow(missing_docs)]
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "plugin",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// The contract version the rest of the host is written against.
pub use v0_1 as latest;

/// The version of the contract [`latest`] is generated from, read at
/// compile time from the package declaration (`package
/// hearth:plugin@X.Y.Z;`) of its WIT, so that nothing typed by hand can
/// drift from it. The path names the folder `latest`'s `bindgen!` reads.
pub const LATEST_VERSION: &str = wit_package_version(
    include_str!("../../../wit/v0.1.0/world.wit"),
    "hearth:plugin",
);

/// The `X.Y.Z` of the first `package <package>@X.Y.Z;` declaration that
/// starts a line of `wit`. A `const fn`, so a WIT text without it, or with
/// a version that is not three dot-separated numbers, fails the build
/// naming the problem. (The SDK has the same function for its own stamp;
/// the host does not depend on the SDK.)
pub const fn wit_package_version(wit: &'static str, package: &str) -> &'static str {
    const KEYWORD: &[u8] = b"package ";
    let (text, name) = (wit.as_bytes(), package.as_bytes());
    let mut at = 0;
    while at < text.len() {
        let line_start = at == 0 || text[at - 1] == b'\n';
        let version_at = at + KEYWORD.len() + name.len();
        if line_start
            && starts_with(text, at, KEYWORD)
            && starts_with(text, at + KEYWORD.len(), name)
            && version_at < text.len()
            && text[version_at] == b'@'
        {
            let start = version_at + 1;
            let mut end = start;
            while end < text.len() && text[end] != b';' {
                end += 1;
            }
            assert!(
                end < text.len(),
                "the WIT package declaration does not end with `;`"
            );
            let (_, rest) = wit.split_at(start);
            let (version, _) = rest.split_at(end - start);
            assert!(
                is_plain_version(version.as_bytes()),
                "the WIT package version is not of the form X.Y.Z"
            );
            return version;
        }
        at += 1;
    }
    panic!("the WIT text has no `package <name>@<version>;` declaration for this package")
}

/// Whether `text[at..]` starts with `prefix`.
const fn starts_with(text: &[u8], at: usize, prefix: &[u8]) -> bool {
    if at + prefix.len() > text.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if text[at + i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `v` is `X.Y.Z`: three non-empty runs of ASCII digits.
const fn is_plain_version(v: &[u8]) -> bool {
    let (mut dots, mut digits, mut i) = (0, 0, 0);
    while i < v.len() {
        match v[i] {
            b'0'..=b'9' => digits += 1,
            b'.' if digits > 0 => {
                dots += 1;
                digits = 0;
            }
            _ => return false,
        }
        i += 1;
    }
    dots == 2 && digits > 0
}

/// Name of the custom section the SDK writes the contract version into.
pub const STAMP_SECTION: &str = "hearth:contract-version";

/// The contract versions this host accepts.
pub fn supported() -> VersionReq {
    VersionReq::parse(">=0.1.0, <0.2.0").expect("valid requirement")
}

/// Checks a declared contract version against [`supported`].
pub fn check_supported(version: &Version) -> Result<(), String> {
    if supported().matches(version) {
        Ok(())
    } else {
        Err(format!(
            "contract {version} is not supported; this hearth supports {}",
            supported()
        ))
    }
}

/// Reads the contract version stamp from a component's bytes without
/// compiling it. Looks into nested core modules, where the SDK's section
/// ends up. `Ok(None)` means the component carries no stamp.
pub fn read_stamp(bytes: &[u8]) -> Result<Option<Version>, String> {
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("not a valid WebAssembly component: {e}"))?;
        if let Payload::CustomSection(section) = payload
            && section.name() == STAMP_SECTION
        {
            let text = std::str::from_utf8(section.data())
                .map_err(|_| "the contract version stamp is not UTF-8".to_string())?;
            return Version::parse(text.trim_end_matches('\0'))
                .map(Some)
                .map_err(|e| format!("the contract version stamp `{text}` is not semver: {e}"));
        }
    }
    Ok(None)
}

/// The name under which a plugin exports its side of the contract, before
/// the `@version`.
pub const GUEST_INTERFACE: &str = "hearth:plugin/guest";

/// What a component's outermost level imports and exports, by name, read
/// from its bytes without compiling or validating it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Surface {
    /// Names of its top-level imports (`wasi:http/types@0.2.6`, ...).
    pub imports: Vec<String>,
    /// Names of its top-level exports.
    pub exports: Vec<String>,
}

/// Reads a component's top-level import and export names. Nested modules
/// and components are skipped over (the parser is iterative, so nesting
/// costs nothing here).
pub fn surface(bytes: &[u8]) -> Result<Surface, String> {
    let mut surface = Surface::default();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("not a valid WebAssembly component: {e}"))?;
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import =
                        import.map_err(|e| format!("not a valid WebAssembly component: {e}"))?;
                    surface.imports.push(import.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export =
                        export.map_err(|e| format!("not a valid WebAssembly component: {e}"))?;
                    surface.exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(surface)
}

/// The contract a component was built against, read from the version in
/// the name of the guest interface it exports
/// (`hearth:plugin/guest@0.1.0`): no special tool is needed to declare it.
/// A `hearth:contract-version` stamp, which older SDKs wrote, is optional;
/// when present it must agree. The error names the guest versions found and
/// the versions supported.
pub fn declared_contract(bytes: &[u8], surface: &Surface) -> Result<Version, ContractError> {
    let found: Vec<&str> = surface
        .exports
        .iter()
        .filter_map(|e| e.strip_prefix(GUEST_INTERFACE))
        .map(|rest| rest.trim_start_matches('@'))
        .collect();
    let versions: Vec<Version> = found
        .iter()
        .filter_map(|v| Version::parse(v).ok())
        .collect();
    let Some(version) = versions.iter().find(|v| supported().matches(v)).cloned() else {
        return Err(if found.is_empty() {
            ContractError::NotAPlugin(format!(
                "it exports no `{GUEST_INTERFACE}` interface (its exports: {}); a hearth plugin exports `{GUEST_INTERFACE}@<version>`, and this hearth supports {}",
                if surface.exports.is_empty() {
                    "none".to_string()
                } else {
                    super::sanitize(&surface.exports.join(", "), 1024)
                },
                supported()
            ))
        } else {
            ContractError::Unsupported(format!(
                "it exports `{GUEST_INTERFACE}` at {}, and this hearth supports {}",
                super::sanitize(
                    &found
                        .iter()
                        .map(|v| if v.is_empty() { "no version" } else { v })
                        .collect::<Vec<_>>()
                        .join(", "),
                    1024
                ),
                supported()
            ))
        });
    };
    if let Some(stamp) = read_stamp(bytes).map_err(ContractError::NotAPlugin)?
        && (stamp.major, stamp.minor) != (version.major, version.minor)
    {
        return Err(ContractError::NotAPlugin(format!(
            "its `{STAMP_SECTION}` stamp says {stamp} but it exports `{GUEST_INTERFACE}@{version}`"
        )));
    }
    Ok(version)
}

/// Why a component declares no contract this host speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContractError {
    /// It is not a hearth plugin: no guest interface, or a stamp that
    /// disagrees with it.
    NotAPlugin(String),
    /// It targets contract versions this host does not support.
    Unsupported(String),
}

/// A capability that must be granted before a component may import it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// `kv = true`.
    Kv,
    /// `llm-tokens > 0`.
    Llm,
    /// Any `[dependencies]`.
    Tools,
    /// Any `http` origin.
    Http,
}

impl Capability {
    /// The manifest setting that grants it.
    pub fn manifest_setting(self) -> &'static str {
        match self {
            Capability::Kv => "[permissions] kv = true",
            Capability::Llm => "[permissions] llm-tokens = <budget>",
            Capability::Tools => "[dependencies]",
            Capability::Http => "[permissions] http = [\"https://host\"]",
        }
    }
}

/// What an import needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportClass {
    /// Always linked: harmless on its own (logging, config, and WASI
    /// interfaces that the host provides with nothing behind them: no
    /// files, no environment, no sockets).
    Always,
    /// Needs a grant.
    Needs(Capability),
    /// Nothing in this host provides it.
    Unknown,
}

/// Classifies an import name such as `wasi:http/types@0.2.6`.
pub fn classify_import(name: &str) -> ImportClass {
    let (path, version) = match name.split_once('@') {
        Some((p, v)) => (p, Version::parse(v).ok()),
        None => (name, None),
    };
    let Some((package, interface)) = path.split_once('/') else {
        return ImportClass::Unknown;
    };
    let wasi_02 = version
        .as_ref()
        .is_some_and(|v| v.major == 0 && v.minor == 2);
    match package {
        "hearth:plugin" if version.as_ref().is_some_and(|v| supported().matches(v)) => {
            match interface {
                "types" | "logging" | "config" => ImportClass::Always,
                "kv" => ImportClass::Needs(Capability::Kv),
                "llm" => ImportClass::Needs(Capability::Llm),
                "tools" => ImportClass::Needs(Capability::Tools),
                _ => ImportClass::Unknown,
            }
        }
        "wasi:http" if wasi_02 => match interface {
            "types" | "outgoing-handler" => ImportClass::Needs(Capability::Http),
            _ => ImportClass::Unknown,
        },
        "wasi:io" | "wasi:clocks" | "wasi:random" | "wasi:cli" | "wasi:filesystem"
        | "wasi:sockets"
            if wasi_02 =>
        {
            ImportClass::Always
        }
        _ => ImportClass::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_imports() {
        assert_eq!(
            classify_import("hearth:plugin/logging@0.1.0"),
            ImportClass::Always
        );
        assert_eq!(
            classify_import("hearth:plugin/kv@0.1.3"),
            ImportClass::Needs(Capability::Kv)
        );
        assert_eq!(
            classify_import("hearth:plugin/kv@0.2.0"),
            ImportClass::Unknown
        );
        assert_eq!(
            classify_import("wasi:http/outgoing-handler@0.2.6"),
            ImportClass::Needs(Capability::Http)
        );
        assert_eq!(
            classify_import("wasi:filesystem/preopens@0.2.3"),
            ImportClass::Always
        );
        assert_eq!(
            classify_import("wasi:filesystem/preopens@0.3.0"),
            ImportClass::Unknown
        );
        assert_eq!(classify_import("evil:spy/secrets"), ImportClass::Unknown);
        assert_eq!(classify_import("plain"), ImportClass::Unknown);
    }

    #[test]
    fn supported_range() {
        assert!(check_supported(&Version::new(0, 1, 9)).is_ok());
        assert!(check_supported(&Version::new(0, 2, 0)).is_err());
        assert!(check_supported(&Version::new(1, 0, 0)).is_err());
    }

    #[test]
    fn the_latest_version_is_what_every_bound_wit_file_declares_and_is_supported() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/v0.1.0");
        let declaration = format!("package hearth:plugin@{LATEST_VERSION};");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.lines().any(|l| l.trim() == declaration),
                "{} does not declare `{declaration}`",
                path.display()
            );
        }
        assert!(dir.ends_with(format!("v{LATEST_VERSION}")));
        assert!(check_supported(&Version::parse(LATEST_VERSION).unwrap()).is_ok());
    }

    #[test]
    fn package_versions_are_read_from_the_declaration_only() {
        let wit = "// package hearth:plugin@9.9.9;\npackage hearth:plugin@1.22.333;\n";
        assert_eq!(wit_package_version(wit, "hearth:plugin"), "1.22.333");
        for bad in [&b"0.1"[..], b"0.1.0-rc1", b".1.0", b"0..0", b"0.1.", b""] {
            assert!(!is_plain_version(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn stamps_are_read_or_absent() {
        let plain = wat::parse_str("(component)").unwrap();
        assert_eq!(read_stamp(&plain).unwrap(), None);
        assert!(read_stamp(b"\0asm garbage").is_err());
    }
}
