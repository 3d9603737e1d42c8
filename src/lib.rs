//! berth: browser terminals, one hardened Docker container per session, run by a reconciliation controller.
//!
//! The pure core (planner, state, policy) lives in `berth-reconciler`; this crate holds the adapters:
//! the Docker runtime, observer, executor, controller loop, terminal data path, HTTP/WebSocket API and metrics.
//!
//! All time goes through tokio's clock (`tokio::time`, and [`clock::now`] for wall time): `clippy.toml` bans the
//! system clocks here, so that tests on a paused clock cover every timer.
#![warn(clippy::disallowed_methods)]

pub mod auth;
pub mod clock;
pub mod controller;
pub mod executor;
pub mod expected;
pub mod launcher;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod observer;
pub mod runtime;
pub mod terminal;

pub use berth_reconciler as reconciler;
pub mod admin;
pub mod admin_client;
pub mod app;
pub mod cli;
pub mod http;
pub mod page;
pub mod recording;
pub mod reload;
pub mod ws;
