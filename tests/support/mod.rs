//! Shared helpers for the integration tests; include with `mod support;`.
//! Each submodule carries its own `#![allow(dead_code)]`, since every test
//! binary uses only part of it.
pub mod daemon_proc;
pub mod fake_glance;
pub mod glance_api;
pub mod harness;
pub mod keystone;
pub mod prometheus;
pub mod real_pair;
pub mod scenario;
pub mod sync_cli;
