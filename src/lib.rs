//! berth: a license-gated pull-through caching registry proxy and image rewriter.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod oci;
pub mod registry;
pub mod rewrite;
pub mod server;
pub mod upstream;
