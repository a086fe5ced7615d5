//! A virtio-net NIC on a tap ([`net`]); the binary serves one in its own
//! process. A library too, so the fuzz targets (fuzz/) can drive it.

pub mod net;
