//! Plugin management: which plugins exist, whether they fit together, and
//! in which order they are activated.
//!
//! - [`resolve`]: the petgraph resolver and its [`Problem`]s.
//! - [`set`]: finding plugins, loading them, activating the consistent part.

pub mod resolve;
pub mod set;

pub use resolve::{Candidate, Problem, Resolution, dot, resolve};
pub use set::{ActiveSet, Discovery, Found, Origin, discover, load_and_activate};
