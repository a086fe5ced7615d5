//! A virtio-blk disk ([`blk`]) and its request parsing ([`request`]); the
//! binary serves one in its own process. A library too, so the fuzz
//! targets (fuzz/) can drive it in-process.

pub mod blk;
pub mod request;
