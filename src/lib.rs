//! berth: a license-gated pull-through caching registry proxy and image rewriter.
#![forbid(unsafe_code)]

pub mod admin;
pub mod airgap;
pub mod api;
mod app;
pub mod audit;
pub mod auth;
pub mod body;
pub mod cache;
pub mod cli;
pub mod config;
pub mod content;
pub mod control;
pub mod error;
pub mod hosted;
pub mod logging;
pub mod oci;
pub mod pin;
pub mod registry;
pub mod rewrite;
pub mod server;
pub mod settings;
pub mod state;
pub mod storage;
pub mod tenancy;
pub mod upstream;

pub use app::{run, StartError};
