//! Plugin management: which plugins exist, whether they fit together, how
//! they are installed, and in which order they are activated.
//!
//! - [`resolve`]: the petgraph resolver and its [`Problem`]s.
//! - [`set`]: finding plugins, loading them, activating the consistent part.
//! - [`registry`]: the index, publisher keys, signatures, capped downloads.
//! - [`store`]: the content-addressed store and the crash-safe lock file.
//! - [`install`]: install, update, remove, enable and disable.
//! - [`ManagerError`]: why a change to the installed set failed, by kind.
//! - [`watch`]: reloading a running host's active set when the installed
//!   set changes on disk.

mod error;
pub mod install;
pub mod registry;
pub mod resolve;
pub mod set;
pub mod store;
pub mod watch;

pub use error::ManagerError;
pub use resolve::{Candidate, Problem, Resolution, dot, resolve};
pub use set::{
    ActiveSet, Discovery, Found, Origin, discover_dir, discover_installed, discover_with_disabled,
    load_and_activate, load_for, reload,
};
pub use watch::watch_installed;
