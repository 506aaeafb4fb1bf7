//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod browser;
pub mod child;
pub mod contract;
pub mod nats;
pub mod rawquic;
pub mod rootkit;
pub mod sim;
