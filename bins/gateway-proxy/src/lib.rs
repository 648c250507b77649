//! The gateway-proxy binary.

pub mod config;
