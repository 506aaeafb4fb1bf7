//! Shared pieces of the sync channel tests.
#![allow(dead_code)]

pub mod ytext;
