//! capvm's AHCI controller: the HBA's registers and command lists
//! ([`hba`]), the ATA command set for disks ([`ata`]), the MMC packet
//! commands for CD-ROMs ([`atapi`]) and the IDENTIFY data both answer
//! with ([`identify`]). The server process (`main.rs`) puts it behind the
//! exit ring; the broker reads [`layout`].
//!
//! Every structure here is read from guest RAM that a hostile guest
//! controls: nothing panics on what it finds there, and every refusal is
//! an ATA error status the guest's driver sees.

pub mod ata;
pub mod atapi;
pub mod hba;
pub mod identify;
pub mod layout;
