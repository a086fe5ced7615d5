//! What every PCI device server (virtio, AHCI) shares: the function's
//! config space ([`config`]) and the start-up that takes the broker's
//! `StartDevice` apart, maps guest RAM and confines the process
//! ([`server`]).

pub mod config;
pub mod server;

pub use config::*;
