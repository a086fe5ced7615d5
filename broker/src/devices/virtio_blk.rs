//! `-s N,virtio-blk,PATH[,opts]`: a disk, served by `capvm-virtio-blk`.

use std::any::Any;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

use capvm_ipc::{BlkOptions, DeviceBackend};
use capvm_policy::{roles, FdGrant, SyscallRule};

use super::{DeviceError, Opened, ServedDevice, SlotOptions};
use crate::config::ConfigError;

/// bhyve's block-device options.
pub const OPTIONS: &[&str] =
    &["path", "ro", "nocache", "sync", "direct", "sectorsize", "nodelete", "ser", "nolock", "bootindex"];

/// A disk, as its slot's options configure it.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// O_DIRECT: bypass the host page cache.
    pub nocache: bool,
    /// O_SYNC: every write reaches the disk before it completes.
    pub sync: bool,
    pub sector_size: u32,
    pub physical_sector_size: u32,
    pub no_delete: bool,
    /// GET_ID's answer; default derived from the slot.
    pub serial: String,
    /// `nolock`: take no image lock (shared storage that locks elsewhere).
    pub no_lock: bool,
    /// Where firmware puts it in its boot order (fw_cfg `bootorder`).
    pub boot_index: Option<u32>,
}

pub fn parse(o: &SlotOptions) -> Result<Box<dyn ServedDevice>, ConfigError> {
    let serial = format!("CAPVM-{}-{}", o.slot, o.func);
    Ok(Box::new(DiskConfig::parse(o, "virtio-blk", serial)?))
}

impl DiskConfig {
    /// bhyve's block-device options of a slot (or an AHCI port); `serial`
    /// is the default for `ser=`.
    pub fn parse(o: &SlotOptions, emulation: &str, serial: String) -> Result<DiskConfig, ConfigError> {
        let at = o.at();
        let path = o.get("path").filter(|p| !p.is_empty()).ok_or_else(|| {
            ConfigError(format!("{at}: give the image file or block device: -s {},{emulation},PATH", o.slot))
        })?;
        let (sector_size, physical_sector_size) = match o.get("sectorsize") {
            None => (512, 512),
            Some(v) => {
                let (l, p) = v.split_once('/').unwrap_or((v, v));
                let size = |s: &str| s.parse::<u32>().ok().filter(|n| n.is_power_of_two() && (512..=65536).contains(n));
                match (size(l), size(p)) {
                    (Some(l), Some(p)) if p >= l => (l, p),
                    _ => {
                        return Err(ConfigError(format!(
                            "{at}: sectorsize={v}: give LOGICAL[/PHYSICAL], powers of two from 512 to 65536"
                        )))
                    }
                }
            }
        };
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only: o.flag("ro")?,
            nocache: o.flag("nocache")?,
            sync: o.flag("sync")? || o.flag("direct")?,
            sector_size,
            physical_sector_size,
            no_delete: o.flag("nodelete")?,
            serial: o.get("ser").map_or(serial, str::to_string),
            no_lock: o.flag("nolock")?,
            boot_index: match o.get("bootindex") {
                None => None,
                Some(v) => Some(v.parse().map_err(|_| ConfigError(format!("{at}: bootindex={v}: not a number")))?),
            },
        })
    }

    /// Opens the image as the options say and measures it.
    pub fn open_image(&self) -> Result<(BlkOptions, OwnedFd), DeviceError> {
        let path = || self.path.display().to_string();
        let mut flags = libc::O_CLOEXEC;
        if self.nocache {
            flags |= libc::O_DIRECT;
        }
        if self.sync {
            flags |= libc::O_SYNC;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!self.read_only)
            .custom_flags(flags)
            .open(&self.path)
            .map_err(|source| DeviceError::Open { path: path(), source })?;
        if !self.no_lock {
            super::image_lock::lock(&file, self.read_only)
                .map_err(|holder| DeviceError::Locked { path: path(), holder })?;
        }
        let meta = file.metadata().map_err(|source| DeviceError::Inspect { path: path(), source })?;
        let (size, can_discard) = if meta.file_type().is_block_device() {
            let size = file.seek(SeekFrom::End(0)).map_err(|source| DeviceError::Inspect { path: path(), source })?;
            (size, false)
        } else if meta.is_file() {
            (meta.len(), true)
        } else {
            return Err(DeviceError::NotADisk(path()));
        };
        if size < 512 {
            return Err(DeviceError::TooSmall(path()));
        }
        let opts = BlkOptions {
            read_only: self.read_only,
            sector_size: self.sector_size,
            physical_sector_size: self.physical_sector_size,
            size,
            no_delete: self.no_delete,
            can_discard,
            serial: self.serial.chars().take(20).collect(),
        };
        Ok((opts, file.into()))
    }
}

impl ServedDevice for DiskConfig {
    fn open(&self) -> Result<Opened, DeviceError> {
        let (opts, fd) = self.open_image()?;
        Ok(Opened::server(DeviceBackend::Blk(opts), vec![fd]))
    }

    fn backend_policy(&self, fds: &[i32]) -> (Vec<FdGrant>, Vec<SyscallRule>) {
        roles::virtio_blk_backend(fds[0], self.read_only)
    }

    fn boot_order(&self, slot: u8, func: u8) -> Vec<(u32, String)> {
        self.boot_index.map(|i| (i, super::firmware_pci_path(slot, func))).into_iter().collect()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
