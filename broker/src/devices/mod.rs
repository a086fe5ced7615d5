//! The device registry: one row per `-s` emulation, the only place that
//! names one. `-s help`, the command line's option words, the
//! configuration check, `--print-policy`, the hostile-test roles and
//! start-up all read [`EMULATIONS`].
//!
//! Adding a device server is a row here, a module beside this one (its
//! options, how its host resources are opened, its backend's rights) and
//! the server's crate.

use std::any::Any;
use std::os::fd::OwnedFd;

use capvm_ipc::{BridgeKind, DeviceBackend, PciFunction};
use capvm_policy::{FdGrant, SyscallRule};

use crate::config::{ConfigError, ConfigTree};
use crate::served::Allocator;
use crate::vm::VmError;

pub mod ahci;
pub mod fbuf;
pub(crate) mod image_lock;
pub mod virtio_blk;
pub mod virtio_net;

/// One `-s` emulation.
pub struct Emulation {
    pub name: &'static str,
    /// Its line in `-s help`.
    pub help: &'static str,
    /// The variables its slot takes (`pci.B.S.F.<option>`).
    pub options: &'static [&'static str],
    /// How the command line's words after the emulation become options.
    pub conf: Conf,
    pub kind: Kind,
}

/// How `-s slot,emulation,conf` words map onto a slot's options.
#[derive(Clone, Copy)]
pub enum Conf {
    /// The first bare word sets `first`, as bhyve: `-s 3,virtio-blk,disk.img`;
    /// later bare words are flags (`ro` means ro=true).
    Flat { first: &'static str },
    /// bhyve's controllers, with options per port (`pci.B.S.F.port.N.<option>`).
    /// `-s 4,ahci,hd:PATH[,opt...],cd:PATH[,opt...]` opens a port at each
    /// `TYPE:PATH`; a one-port row (`ahci-cd`, `fixed: Some("cd")`) takes
    /// `PATH[,opt...]` for port 0.
    Ports { port_options: &'static [&'static str], fixed: Option<&'static str> },
}

pub enum Kind {
    /// A platform function the runner answers from a fixed header.
    Bridge(BridgeKind),
    /// A function served by a process of its own.
    Served(Served),
}

/// What the broker needs to know of a device server.
#[derive(Debug)]
pub struct Served {
    /// The executable, beside `capvm` (or in `$CAPVM_LIBEXEC_DIR`).
    pub server: &'static str,
    /// Lays its PCI function out: BARs and interrupt GSIs from the
    /// allocator; its options may shape it (a display's ROM).
    pub layout: fn(u8, u8, &dyn ServedDevice, &mut Allocator) -> Result<PciFunction, VmError>,
    /// Checks the slot's options.
    pub parse: fn(&SlotOptions) -> Result<Box<dyn ServedDevice>, ConfigError>,
}

/// A device's host resource could not be opened or is unfit.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Inspect { path: String, source: std::io::Error },
    #[error("{0} is neither a file nor a block device")]
    NotADisk(String),
    #[error("{0} holds less than one sector")]
    TooSmall(String),
    #[error("{path} is in use by {holder} (add nolock to share it anyway)")]
    Locked { path: String, holder: String },
    #[error("tap {name}: {source}")]
    Tap { name: String, source: virtio_net::TapError },
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Os { what: &'static str, source: std::io::Error },
    #[error("option ROM {path}: {why}")]
    OptionRom { path: String, why: String },
}

/// A device's host resources, opened.
pub struct Opened {
    /// What the server is told about them.
    pub backend: DeviceBackend,
    /// The server's backend fds.
    pub fds: Vec<OwnedFd>,
    /// A display's framebuffer and VNC server (fbuf only).
    pub display: Option<fbuf::DisplayHost>,
}

impl Opened {
    pub fn server(backend: DeviceBackend, fds: Vec<OwnedFd>) -> Opened {
        Opened { backend, fds, display: None }
    }
}

/// One configured device server's own part: options checked, ready to open.
pub trait ServedDevice: std::fmt::Debug {
    /// Opens its host resources (an image, a tap, a listening socket).
    fn open(&self) -> Result<Opened, DeviceError>;
    /// Whether its server reaches guest RAM (DMA); a display's registers do not.
    fn needs_guest_ram(&self) -> bool {
        true
    }
    /// How many backend fds `open` gives its server.
    fn backend_fd_count(&self) -> usize {
        1
    }
    /// Its backend fds' rights and the syscalls its data path adds, given
    /// the numbers those fds will have in the server.
    fn backend_policy(&self, fds: &[i32]) -> (Vec<FdGrant>, Vec<SyscallRule>);
    /// Its bootable drives with a `bootindex=`: (index, the firmware's
    /// device path) for fw_cfg's `bootorder`, given its PCI slot.
    fn boot_order(&self, _slot: u8, _func: u8) -> Vec<(u32, String)> {
        Vec::new()
    }
    /// For tests and diagnostics that need the concrete options.
    fn as_any(&self) -> &dyn Any;
}

pub const EMULATIONS: &[Emulation] = &[
    Emulation {
        name: "hostbridge",
        help: "PCI host bridge (answered by the vCPU runner)",
        options: &[],
        conf: Conf::Flat { first: "" },
        kind: Kind::Bridge(BridgeKind::HostBridge),
    },
    Emulation {
        name: "amd_hostbridge",
        help: "as hostbridge, with AMD's vendor id",
        options: &[],
        conf: Conf::Flat { first: "" },
        kind: Kind::Bridge(BridgeKind::AmdHostBridge),
    },
    Emulation {
        name: "lpc",
        help: "LPC bridge: the platform devices, COM1-COM4 (see -l help)",
        options: &[],
        conf: Conf::Flat { first: "" },
        kind: Kind::Bridge(BridgeKind::Lpc),
    },
    Emulation {
        name: "virtio-blk",
        help:
            "virtio disk in its own process: PATH[,ro][,nocache][,sync|direct][,sectorsize=L[/P]][,nodelete][,ser=ID][,nolock][,bootindex=N]",
        options: virtio_blk::OPTIONS,
        conf: Conf::Flat { first: "path" },
        kind: Kind::Served(Served {
            server: "capvm-virtio-blk",
            layout: |slot, func, _, alloc| alloc.virtio(slot, func, capvm_virtio::layout::BLK_QUEUES),
            parse: virtio_blk::parse,
        }),
    },
    Emulation {
        name: "virtio-net",
        help: "virtio NIC in its own process on a tap: TAPNAME[,mac=xx:xx:xx:xx:xx:xx][,mtu=N]",
        options: virtio_net::OPTIONS,
        conf: Conf::Flat { first: "backend" },
        kind: Kind::Served(Served {
            server: "capvm-virtio-net",
            layout: |slot, func, _, alloc| alloc.virtio(slot, func, capvm_virtio::layout::NET_QUEUES),
            parse: virtio_net::parse,
        }),
    },
    Emulation {
        name: "fbuf",
        help: "display (bochs-display registers in their own process) and VNC server in another: [tcp=[IP:]PORT][,w=W][,h=H][,password=P][,vga=off][,rom=PATH|off]",
        options: fbuf::OPTIONS,
        conf: Conf::Flat { first: "" },
        kind: Kind::Served(fbuf::SERVED),
    },
    Emulation {
        name: "ahci",
        help: "AHCI controller in its own process, up to 32 ports: hd:PATH[,opts],cd:PATH[,opts],...",
        options: &[],
        conf: Conf::Ports { port_options: ahci::PORT_OPTIONS, fixed: None },
        kind: Kind::Served(ahci::SERVED),
    },
    Emulation {
        name: "ahci-hd",
        help: "AHCI disk (a controller with one port): PATH[,ro][,nocache][,sync][,sectorsize=L[/P]][,nodelete][,ser=ID][,model=M][,rev=R][,nmrr=N][,bootindex=N][,nolock]",
        options: &[],
        conf: Conf::Ports { port_options: ahci::PORT_OPTIONS, fixed: Some("hd") },
        kind: Kind::Served(ahci::SERVED),
    },
    Emulation {
        name: "ahci-cd",
        help: "AHCI CD-ROM, read-only (a controller with one port): PATH[,ser=ID][,model=M][,rev=R][,bootindex=N]",
        options: &[],
        conf: Conf::Ports { port_options: ahci::PORT_OPTIONS, fixed: Some("cd") },
        kind: Kind::Served(ahci::SERVED),
    },
];

impl std::fmt::Debug for Emulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The row for an emulation name.
pub fn lookup(name: &str) -> Option<&'static Emulation> {
    EMULATIONS.iter().find(|e| e.name == name)
}

/// The LPC bridge, which the COM ports need.
pub fn is_lpc(e: &Emulation) -> bool {
    matches!(e.kind, Kind::Bridge(BridgeKind::Lpc))
}

/// The roles `-o sandbox.test_violation=ROLE:OP` can name: the runner, the
/// uart servers and every served emulation.
pub fn hostile_roles() -> Vec<&'static str> {
    let mut roles = vec!["uart", "vcpu-runner", "vnc", "i8042"];
    roles.extend(EMULATIONS.iter().filter(|e| matches!(e.kind, Kind::Served(_))).map(|e| e.name));
    roles
}

/// A slot's options as its parser reads them.
pub struct SlotOptions<'a> {
    pub tree: &'a ConfigTree,
    pub slot: u8,
    pub func: u8,
    pub emulation: &'static str,
    pub vm_name: &'a str,
    /// For a controller's port: `port.N.` before every key.
    pub port: Option<u8>,
}

impl SlotOptions<'_> {
    fn key(&self, key: &str) -> String {
        match self.port {
            Some(n) => format!("pci.0.{}.{}.port.{n}.{key}", self.slot, self.func),
            None => format!("pci.0.{}.{}.{key}", self.slot, self.func),
        }
    }

    /// `pci.0.S.F.<key>` (or `pci.0.S.F.port.N.<key>`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.tree.get(&self.key(key))
    }

    /// A boolean option (`ro` on the command line means `ro=true`).
    pub fn flag(&self, key: &str) -> Result<bool, ConfigError> {
        self.tree.bool(&self.key(key), false)
    }

    /// The ports a controller's options name, in order.
    pub fn ports(&self) -> Vec<u8> {
        let prefix = format!("pci.0.{}.{}.port.", self.slot, self.func);
        let mut ports: Vec<u8> = self
            .tree
            .keys_under(&prefix)
            .filter_map(|rest| rest.split('.').next().and_then(|n| n.parse().ok()))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The options of port `n`.
    pub fn port(&self, n: u8) -> SlotOptions<'_> {
        SlotOptions { port: Some(n), ..*self }
    }

    /// How errors name the slot: `-s 3:0,virtio-blk` (`-s 4:0,ahci port 1`).
    pub fn at(&self) -> String {
        match self.port {
            Some(n) => format!("{} port {n}", slot_name(self.emulation, self.slot, self.func)),
            None => slot_name(self.emulation, self.slot, self.func),
        }
    }
}

/// A PCI function's path as SeaBIOS names it in `bootorder`:
/// `/pci@i0cf8/*@4` (`*@4,1` for function 1).
pub fn firmware_pci_path(slot: u8, func: u8) -> String {
    match func {
        0 => format!("/pci@i0cf8/*@{slot:x}"),
        f => format!("/pci@i0cf8/*@{slot:x},{f:x}"),
    }
}

/// `-s 3:0,virtio-blk`.
pub fn slot_name(emulation: &str, slot: u8, func: u8) -> String {
    format!("-s {slot}:{func},{emulation}")
}

/// `virtio-blk (0:3.0)`.
pub fn server_name(emulation: &str, slot: u8, func: u8) -> String {
    format!("{emulation} (0:{slot}.{func})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_emulation_is_named_once_and_served_ones_have_a_first_option() {
        for (i, e) in EMULATIONS.iter().enumerate() {
            assert!(EMULATIONS[..i].iter().all(|o| o.name != e.name), "{} twice", e.name);
            if let Kind::Served(s) = &e.kind {
                if let Conf::Flat { first } = e.conf {
                    assert!(first.is_empty() || e.options.contains(&first), "{}: first option not an option", e.name);
                }
                assert!(s.server.starts_with("capvm-"), "{}", s.server);
            }
        }
        assert!(lookup("lpc").is_some_and(is_lpc));
        assert!(hostile_roles().contains(&"virtio-net"));
    }
}
