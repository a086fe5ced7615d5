//! `-s N,ahci,hd:PATH,cd:PATH,...`, `-s N,ahci-hd,PATH` and
//! `-s N,ahci-cd,PATH`: an AHCI controller, served by `capvm-ahci`, with
//! one drive per port.

use std::any::Any;
use std::hash::{Hash, Hasher};

use capvm_ahci::layout;
use capvm_ipc::{AhciDrive, DeviceBackend};
use capvm_policy::{roles, FdGrant, SyscallRule};

use super::virtio_blk::DiskConfig;
use super::{DeviceError, Opened, Served, ServedDevice, SlotOptions};
use crate::config::ConfigError;

/// A port's options: bhyve's block-device options and AHCI's own.
pub const PORT_OPTIONS: &[&str] = &[
    "type",
    "path",
    "ro",
    "nocache",
    "sync",
    "direct",
    "sectorsize",
    "nodelete",
    "ser",
    "model",
    "rev",
    "nmrr",
    "bootindex",
    "nolock",
];

pub const SERVED: Served = Served {
    server: "capvm-ahci",
    layout: |slot, func, _, alloc| Ok(layout::function(slot, func, alloc.bar(layout::ABAR_SIZE)?, alloc.gsis(1))),
    parse,
};

/// One port's drive.
#[derive(Debug, Clone, PartialEq)]
pub struct PortConfig {
    pub port: u8,
    pub cd: bool,
    pub disk: DiskConfig,
    pub model: String,
    pub revision: String,
    pub rotation_rate: u16,
}

/// A controller: its ports in order.
#[derive(Debug, Clone, PartialEq)]
pub struct AhciConfig {
    pub ports: Vec<PortConfig>,
}

/// bhyve's default serial: derived from the path, so a drive keeps it
/// from run to run.
fn serial_from_path(path: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    let v = h.finish();
    format!("CAPVM-{:04X}-{:04X}-{:04X}", v >> 48, (v >> 32) & 0xffff, (v >> 16) & 0xffff)
}

pub fn parse(o: &SlotOptions) -> Result<Box<dyn ServedDevice>, ConfigError> {
    let ports = o.ports();
    if ports.is_empty() {
        let at = o.at();
        return Err(ConfigError(format!(
            "{at}: give its drives: -s {},ahci,hd:PATH[,opts],cd:PATH[,opts] (or ahci-hd,PATH / ahci-cd,PATH)",
            o.slot
        )));
    }
    let mut out = Vec::new();
    for (i, &n) in ports.iter().enumerate() {
        let p = o.port(n);
        let at = p.at();
        if n as usize != i {
            return Err(ConfigError(format!("{at}: ports are numbered from 0 without gaps")));
        }
        let cd = match p.get("type") {
            Some("hd") => false,
            Some("cd") => true,
            Some(t) => return Err(ConfigError(format!("{at}: type={t}: a port holds an hd or a cd"))),
            None => return Err(ConfigError(format!("{at}: give its type=hd or type=cd"))),
        };
        let path = p.get("path").unwrap_or_default();
        let mut disk = DiskConfig::parse(&p, if cd { "ahci-cd" } else { "ahci-hd" }, serial_from_path(path))?;
        if cd {
            if p.get("sectorsize").is_some() {
                return Err(ConfigError(format!("{at}: a CD's sectors are 2048 bytes; sectorsize= is for disks")));
            }
            // A CD is read-only whatever the options say.
            disk.read_only = true;
            disk.sector_size = 2048;
            disk.physical_sector_size = 2048;
        }
        let text = |key: &str, default: &str, max: usize| -> Result<String, ConfigError> {
            let v = p.get(key).unwrap_or(default);
            if v.len() > max || !v.bytes().all(|c| c.is_ascii_graphic() || c == b' ') {
                return Err(ConfigError(format!("{at}: {key}={v}: up to {max} printable ASCII characters")));
            }
            Ok(v.to_string())
        };
        if disk.serial.len() > 20 {
            return Err(ConfigError(format!("{at}: ser={}: up to 20 characters", disk.serial)));
        }
        let rotation_rate = match p.get("nmrr") {
            None => 0,
            Some(v) => {
                v.parse::<u16>().ok().filter(|&r| r == 1 || (0x0401..=0xfffe).contains(&r) || r == 0).ok_or_else(
                    || ConfigError(format!("{at}: nmrr={v}: 0 (not reported), 1 (solid state) or 1025-65534 rpm")),
                )?
            }
        };
        out.push(PortConfig {
            port: n,
            cd,
            model: text("model", if cd { "CAPVM SATA DVD ROM" } else { "CAPVM SATA DISK" }, 40)?,
            revision: text("rev", "001", 8)?,
            rotation_rate,
            disk,
        });
    }
    Ok(Box::new(AhciConfig { ports: out }))
}

impl ServedDevice for AhciConfig {
    /// Opens each port's image (read-only for a CD) and measures it.
    fn open(&self) -> Result<Opened, DeviceError> {
        let mut drives = Vec::new();
        let mut fds = Vec::new();
        for p in &self.ports {
            let (disk, fd) = p.disk.open_image()?;
            drives.push(AhciDrive {
                cd: p.cd,
                disk,
                model: p.model.clone(),
                revision: p.revision.clone(),
                rotation_rate: p.rotation_rate,
            });
            fds.push(fd);
        }
        Ok(Opened::server(DeviceBackend::Ahci(drives), fds))
    }

    fn backend_fd_count(&self) -> usize {
        self.ports.len()
    }

    fn boot_order(&self, slot: u8, func: u8) -> Vec<(u32, String)> {
        let pci = super::firmware_pci_path(slot, func);
        let path = |port: u8| format!("{pci}/drive@{port:x}/disk@0");
        self.ports.iter().filter_map(|p| Some((p.disk.boot_index?, path(p.port)))).collect()
    }

    fn backend_policy(&self, fds: &[i32]) -> (Vec<FdGrant>, Vec<SyscallRule>) {
        let disks: Vec<(i32, bool)> = fds.iter().zip(&self.ports).map(|(&fd, p)| (fd, p.disk.read_only)).collect();
        roles::disks_backend(&disks)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
