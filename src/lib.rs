//! glance-sync: keeps OpenStack Glance images identical across clouds.
//!
//! The data path, module by module: [`config`] (the policy) → [`auth`] + [`glance`] (listing both
//! sides, kept in a [`listing`] and read back a range of names at a time) → [`plan`] (pure diff into actions, with [`metadata`] for what copies carry) → [`transfer`] (streaming copy) or [`server_copy`] (the target Glance pulls) → [`verify`]
//! (digests and checks) → [`state`] (record). [`engine`] drives that path for one job.
//! See ARCHITECTURE.md for the codemap and the invariants.

pub mod auth;
pub mod bandwidth;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod glance;
pub mod http;
pub mod image;
pub mod listing;
pub mod metadata;
pub mod metrics;
pub mod plan;
pub mod progress;
pub mod pushgateway;
pub mod schedule;
pub mod server_copy;
pub mod state;
pub mod status;
pub mod status_page;
pub mod terminal;
pub mod transfer;
pub mod verify;
