//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod contract;
pub mod rawquic;
pub mod rootkit;
