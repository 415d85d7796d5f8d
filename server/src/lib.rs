//! The ollamamax server as a library: the HTTP API, the CLI, the cluster wiring, configuration, metrics and the
//! dashboard. The `ollamamax` binary (`main.rs`) parses its command line and calls in here; fuzz targets and tests
//! reach the request types and the router directly.

pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod duration;
pub mod metrics;
pub mod node;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod serve;
pub mod ui;
