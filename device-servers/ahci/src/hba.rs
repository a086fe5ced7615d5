//! The host bus adapter (AHCI 1.3.1): generic host control, one register
//! block per port, and the command engine that walks a port's command list
//! in guest RAM when the driver sets bits in PxCI.
//!
//! Commands run to completion in the order of their slots, in the server's
//! thread, right after the vCPU that wrote PxCI has its answer: one exit
//! per batch of commands, as on real hardware.

use capvm_block::{Image, ImageError};
use capvm_ipc::AhciDrive;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::MAX_PORTS;
use crate::{ata, atapi};

// Generic host control registers.
const CAP: u64 = 0x00;
const GHC: u64 = 0x04;
const IS: u64 = 0x08;
const PI: u64 = 0x0c;
const VS: u64 = 0x10;
const CAP2: u64 = 0x24;
const PORTS_AT: u64 = 0x100;
const PORT_LEN: u64 = 0x80;

// Port registers.
const PX_CLB: u64 = 0x00;
const PX_CLBU: u64 = 0x04;
const PX_FB: u64 = 0x08;
const PX_FBU: u64 = 0x0c;
const PX_IS: u64 = 0x10;
const PX_IE: u64 = 0x14;
const PX_CMD: u64 = 0x18;
const PX_TFD: u64 = 0x20;
const PX_SIG: u64 = 0x24;
const PX_SSTS: u64 = 0x28;
const PX_SCTL: u64 = 0x2c;
const PX_SERR: u64 = 0x30;
const PX_SACT: u64 = 0x34;
const PX_CI: u64 = 0x38;

const GHC_HR: u32 = 1 << 0;
const GHC_IE: u32 = 1 << 1;
const GHC_AE: u32 = 1 << 31;

/// CAP: 64-bit addressing, NCQ, AHCI-only, command list override,
/// 6 Gb/s, 32 command slots; NP is filled in.
const CAP_FIXED: u32 = 1 << 31 | 1 << 30 | 1 << 18 | 1 << 24 | 3 << 20 | 31 << 8;

const CMD_ST: u32 = 1 << 0;
const CMD_SUD: u32 = 1 << 1;
const CMD_POD: u32 = 1 << 2;
const CMD_CLO: u32 = 1 << 3;
const CMD_FRE: u32 = 1 << 4;
const CMD_FR: u32 = 1 << 14;
const CMD_CR: u32 = 1 << 15;
const CMD_ATAPI: u32 = 1 << 24;
/// What the driver may set in PxCMD: ST, CLO, FRE, ATAPI, DLAE, ALPE,
/// ASP, ICC (SUD and POD are fixed at 1: no staggered spin-up).
const CMD_WRITABLE: u32 = CMD_ST | CMD_CLO | CMD_FRE | CMD_ATAPI | 0xf << 28 | 3 << 25 | 1 << 27;

// PxIS bits.
pub const IS_DHRS: u32 = 1 << 0;
pub const IS_PSS: u32 = 1 << 1;
pub const IS_SDBS: u32 = 1 << 3;
pub const IS_TFES: u32 = 1 << 30;
const IS_VALID: u32 = 0xfdc0_007f;

/// Task-file status bits.
pub const STATUS_ERR: u8 = 0x01;
pub const STATUS_DRQ: u8 = 0x08;
pub const STATUS_DSC: u8 = 0x10;
pub const STATUS_DRDY: u8 = 0x40;
pub const STATUS_BSY: u8 = 0x80;
/// Error register: command aborted.
pub const ERROR_ABRT: u8 = 0x04;
/// Error register: ID not found (an LBA past the end).
pub const ERROR_IDNF: u8 = 0x10;

const SIG_ATA: u32 = 0x0000_0101;
const SIG_ATAPI: u32 = 0xeb14_0101;
/// Device present, link up at Gen3, interface active.
const SSTS_UP: u32 = 0x133;

const FIS_H2D: u8 = 0x27;
const FIS_D2H: u8 = 0x34;
const FIS_SDB: u8 = 0xa1;
const FIS_PIO_SETUP: u8 = 0x5f;
// Where each FIS lands in the received-FIS area.
const RFIS_PIO_SETUP: u64 = 0x20;
const RFIS_D2H: u64 = 0x40;
const RFIS_SDB: u64 = 0x58;

/// Most PRDT entries one command may have (PRDTL is 16 bits).
const MAX_PRDT: usize = 65535;

/// One scatter-gather element of a command (a PRDT entry).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prd {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A command as the engine hands it to a command set.
pub struct Command<'a> {
    /// The command FIS (Register - Host to Device).
    pub fis: [u8; 20],
    /// The ATAPI packet.
    pub packet: [u8; 16],
    pub prdt: &'a [Prd],
    pub mem: &'a GuestMemoryMmap,
}

/// Why a command failed, as the task file shows it and the stats count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The command header, table or a PRDT entry points outside RAM.
    #[error("command structures outside guest RAM")]
    OutsideRam,
    /// The command FIS is not a Register - Host to Device FIS.
    #[error("bad FIS type")]
    BadFis,
    /// The PRDT holds less than the command moves, or an odd entry.
    #[error("bad PRDT")]
    BadPrdt,
    /// Sectors past the end of the drive.
    #[error("LBA out of range")]
    OutOfRange,
    /// A write to a read-only disk.
    #[error("read-only drive")]
    ReadOnly,
    /// A command this drive does not implement (ATA) or refuses (ABRT).
    #[error("unsupported command {0:#04x}")]
    Unsupported(u8),
    /// The host's I/O failed (errno).
    #[error("I/O error (errno {0})")]
    Io(i32),
    /// An ATAPI packet command ended in CHECK CONDITION (sense key).
    #[error("check condition (sense key {0:#x})")]
    CheckCondition(u8),
}

impl CommandError {
    /// The stats page counter it adds to.
    pub fn counter(self) -> &'static str {
        match self {
            CommandError::OutsideRam => "errors_outside_ram",
            CommandError::BadFis => "errors_bad_fis",
            CommandError::BadPrdt => "errors_bad_prdt",
            CommandError::OutOfRange => "errors_out_of_range",
            CommandError::ReadOnly => "errors_read_only",
            CommandError::Unsupported(_) => "errors_unsupported",
            CommandError::Io(_) => "errors_io",
            CommandError::CheckCondition(_) => "errors_check_condition",
        }
    }

    pub const KINDS: [CommandError; 8] = [
        CommandError::OutsideRam,
        CommandError::BadFis,
        CommandError::BadPrdt,
        CommandError::OutOfRange,
        CommandError::ReadOnly,
        CommandError::Unsupported(0),
        CommandError::Io(0),
        CommandError::CheckCondition(0),
    ];

    /// The error register's value.
    fn error_register(self) -> u8 {
        match self {
            CommandError::OutOfRange => ERROR_IDNF,
            // ATAPI: the sense key in the upper nibble.
            CommandError::CheckCondition(key) => key << 4 | ERROR_ABRT,
            _ => ERROR_ABRT,
        }
    }
}

impl From<ImageError> for CommandError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::OutsideRam => CommandError::OutsideRam,
            ImageError::Io(errno) => CommandError::Io(errno),
        }
    }
}

/// What a successful command did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Done {
    /// Bytes moved through the PRDT.
    pub bytes: u64,
    /// A PIO data-in command (IDENTIFY): the driver reads its ending status
    /// from a PIO Setup FIS.
    pub pio_in: bool,
    /// The count register at the end (CHECK POWER MODE answers there).
    pub count: u8,
    /// The data went from the drive to the guest (for the byte counters).
    pub to_guest: bool,
}

/// A drive behind a port.
pub struct Drive {
    pub image: Image,
    pub info: AhciDrive,
    /// ATAPI: the sense data of the last CHECK CONDITION.
    pub sense: atapi::Sense,
}

impl Drive {
    pub fn new(image: Image, info: AhciDrive) -> Drive {
        Drive { image, info, sense: atapi::Sense::default() }
    }
}

struct Port {
    drive: Drive,
    clb: u64,
    fb: u64,
    is: u32,
    ie: u32,
    cmd: u32,
    tfd: u32,
    sctl: u32,
    ssts: u32,
    serr: u32,
    sact: u32,
    ci: u32,
}

impl Port {
    fn new(drive: Drive) -> Port {
        let mut p =
            Port { drive, clb: 0, fb: 0, is: 0, ie: 0, cmd: 0, tfd: 0, sctl: 0, ssts: 0, serr: 0, sact: 0, ci: 0 };
        p.reset();
        p
    }

    /// Port and device reset (HBA reset, or COMRESET ending): the link is
    /// up, the device idle, its signature in PxSIG.
    fn reset(&mut self) {
        self.is = 0;
        self.ie = 0;
        self.cmd = CMD_SUD | CMD_POD | if self.drive.info.cd { CMD_ATAPI } else { 0 };
        self.sact = 0;
        self.ci = 0;
        self.serr = 0;
        self.sctl = 0;
        self.device_reset();
    }

    fn device_reset(&mut self) {
        self.ssts = SSTS_UP;
        self.tfd = (STATUS_DRDY | STATUS_DSC) as u32;
        self.drive.sense = atapi::Sense::default();
    }

    fn signature(&self) -> u32 {
        if self.drive.info.cd {
            SIG_ATAPI
        } else {
            SIG_ATA
        }
    }

    fn read(&self, reg: u64) -> u32 {
        match reg {
            PX_CLB => self.clb as u32,
            PX_CLBU => (self.clb >> 32) as u32,
            PX_FB => self.fb as u32,
            PX_FBU => (self.fb >> 32) as u32,
            PX_IS => self.is,
            PX_IE => self.ie,
            PX_CMD => {
                let running = if self.cmd & CMD_ST != 0 { CMD_CR } else { 0 };
                let receiving = if self.cmd & CMD_FRE != 0 { CMD_FR } else { 0 };
                self.cmd | running | receiving
            }
            PX_TFD => self.tfd,
            PX_SIG => self.signature(),
            PX_SSTS => self.ssts,
            PX_SCTL => self.sctl,
            PX_SERR => self.serr,
            PX_SACT => self.sact,
            PX_CI => self.ci,
            _ => 0,
        }
    }
}

/// Counters of what the guest made the controller do.
pub trait Stats {
    fn command(&self, ncq: bool, packet: bool);
    fn error(&self, e: CommandError);
    fn bytes(&self, to_guest: bool, n: u64);
}

pub struct Hba {
    ghc: u32,
    is: u32,
    ports: Vec<Port>,
}

/// What a register write asks of the server.
#[derive(Debug, PartialEq)]
pub enum Kick {
    None,
    /// Run the commands of this port (PxCI or PxSACT was written).
    Port(usize),
    /// The interrupt state may have changed (IS, PxIS, PxIE, GHC written).
    Interrupts,
}

impl Hba {
    pub fn new(drives: Vec<Drive>) -> Hba {
        assert!(!drives.is_empty() && drives.len() <= MAX_PORTS, "1 to 32 ports");
        Hba { ghc: GHC_AE, is: 0, ports: drives.into_iter().map(Port::new).collect() }
    }

    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    /// A read of the ABAR: any naturally aligned 1, 2 or 4 bytes of a
    /// register; anything else floats high.
    pub fn read(&self, offset: u64, size: u8) -> u64 {
        if !matches!(size, 1 | 2 | 4) || !offset.is_multiple_of(size as u64) {
            return u64::MAX;
        }
        let reg = offset & !3;
        let value = match reg {
            CAP => CAP_FIXED | (self.ports.len() as u32 - 1),
            GHC => self.ghc,
            IS => self.is,
            PI => (1u64 << self.ports.len()).wrapping_sub(1) as u32,
            VS => 0x0001_0301,
            CAP2 => 0,
            r if r >= PORTS_AT => match self.ports.get(((r - PORTS_AT) / PORT_LEN) as usize) {
                Some(p) => p.read((r - PORTS_AT) % PORT_LEN),
                None => 0,
            },
            _ => 0,
        };
        let shift = 8 * (offset & 3);
        let mask = if size == 4 { u32::MAX } else { (1u32 << (8 * size)) - 1 };
        ((value >> shift) & mask) as u64
    }

    /// A write to the ABAR. Registers take whole dwords.
    pub fn write(&mut self, offset: u64, size: u8, value: u64, mem: Option<&GuestMemoryMmap>) -> Kick {
        if size != 4 || !offset.is_multiple_of(4) {
            return Kick::None;
        }
        let v = value as u32;
        match offset {
            GHC => {
                if v & GHC_HR != 0 {
                    self.reset();
                } else {
                    self.ghc = GHC_AE | (v & GHC_IE);
                }
                Kick::Interrupts
            }
            IS => {
                self.is &= !v;
                Kick::Interrupts
            }
            r if r >= PORTS_AT => {
                let n = ((r - PORTS_AT) / PORT_LEN) as usize;
                match self.ports.get_mut(n) {
                    Some(p) => port_write(p, (r - PORTS_AT) % PORT_LEN, v, mem, n),
                    None => Kick::None,
                }
            }
            _ => Kick::None,
        }
    }

    /// GHC.HR: every port back to its state at power-on.
    fn reset(&mut self) {
        self.ghc = GHC_AE;
        self.is = 0;
        for p in &mut self.ports {
            p.reset();
        }
    }

    /// Whether the controller wants an interrupt: a port's enabled status
    /// bit set (then its bit in IS is too) and GHC.IE on.
    pub fn interrupt_pending(&mut self) -> bool {
        for (i, p) in self.ports.iter().enumerate() {
            if p.is & p.ie != 0 {
                self.is |= 1 << i;
            }
        }
        self.ghc & GHC_IE != 0 && self.is != 0
    }

    /// Runs the commands whose PxCI (or, for NCQ, PxSACT) bits are set,
    /// slot by slot. A failing command stops the port (as PxIS.TFES does
    /// on hardware) until the driver restarts it.
    pub fn run_port(&mut self, n: usize, mem: &GuestMemoryMmap, stats: &impl Stats) {
        let Some(port) = self.ports.get_mut(n) else { return };
        for slot in 0..32 {
            let bit = 1u32 << slot;
            if port.cmd & CMD_ST == 0 || port.ci & bit == 0 || port.tfd & STATUS_ERR as u32 != 0 {
                continue;
            }
            run_slot(port, slot, mem, stats);
        }
    }
}

fn port_write(p: &mut Port, reg: u64, v: u32, mem: Option<&GuestMemoryMmap>, n: usize) -> Kick {
    match reg {
        PX_CLB => p.clb = (p.clb & !0xffff_ffff) | (v & !0x3ff) as u64,
        PX_CLBU => p.clb = (p.clb & 0xffff_ffff) | (v as u64) << 32,
        PX_FB => p.fb = (p.fb & !0xffff_ffff) | (v & !0xff) as u64,
        PX_FBU => p.fb = (p.fb & 0xffff_ffff) | (v as u64) << 32,
        PX_IS => {
            p.is &= !(v & IS_VALID);
            return Kick::Interrupts;
        }
        PX_IE => {
            p.ie = v & IS_VALID;
            return Kick::Interrupts;
        }
        PX_CMD => {
            let was_running = p.cmd & CMD_ST != 0;
            p.cmd = (p.cmd & !CMD_WRITABLE) | (v & CMD_WRITABLE);
            if v & CMD_CLO != 0 {
                // Command list override: the driver clears BSY and DRQ.
                p.tfd &= !((STATUS_BSY | STATUS_DRQ) as u32);
                p.cmd &= !CMD_CLO;
            }
            if was_running && p.cmd & CMD_ST == 0 {
                // Stopping the command list drops what it held.
                p.ci = 0;
                p.sact = 0;
            }
            if !was_running && p.cmd & CMD_ST != 0 {
                // Starting it clears an error the last run stopped on.
                p.tfd &= !(STATUS_ERR as u32);
            }
        }
        PX_SCTL => {
            let det_was = p.sctl & 0xf;
            p.sctl = v & 0xfff;
            match (det_was, v & 0xf) {
                // COMRESET asserted: the link goes down.
                (_, 1) => {
                    p.ssts = 0;
                    p.tfd = (STATUS_BSY) as u32;
                }
                // ... and released: the device comes back and says what it is.
                (1, 0) => {
                    p.device_reset();
                    p.serr |= 1 << 26 | 1 << 18;
                    if let Some(mem) = mem {
                        signature_fis(p, mem);
                    }
                }
                _ => {}
            }
        }
        PX_SERR => p.serr &= !v,
        PX_SACT if p.cmd & CMD_ST != 0 => p.sact |= v,
        PX_CI if p.cmd & CMD_ST != 0 => {
            p.ci |= v;
            return Kick::Port(n);
        }
        _ => {}
    }
    Kick::None
}

/// The D2H FIS a device sends after reset, with its signature.
fn signature_fis(p: &mut Port, mem: &GuestMemoryMmap) {
    let sig = p.signature().to_le_bytes();
    let mut fis = [0u8; 20];
    fis[0] = FIS_D2H;
    fis[2] = p.tfd as u8;
    fis[4] = sig[1];
    fis[5] = sig[2];
    fis[6] = sig[3];
    fis[12] = sig[0];
    receive_fis(p, mem, RFIS_D2H, &fis);
}

/// Puts a FIS into the port's received-FIS area, if FIS receive is on.
/// An area outside RAM loses the FIS (the driver misconfigured it).
fn receive_fis(p: &Port, mem: &GuestMemoryMmap, at: u64, fis: &[u8]) {
    if p.cmd & CMD_FRE != 0 {
        let _ = mem.write_slice(fis, GuestAddress(p.fb.wrapping_add(at)));
    }
}

/// Runs the command in `slot`.
fn run_slot(port: &mut Port, slot: u32, mem: &GuestMemoryMmap, stats: &impl Stats) {
    let bit = 1u32 << slot;
    let header_at = GuestAddress(port.clb.wrapping_add(32 * slot as u64));
    let mut header = [0u8; 16];
    let fetched = mem.read_slice(&mut header, header_at).map_err(|_| CommandError::OutsideRam).and_then(|()| {
        let dw0 = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let table = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default()) & !0x7f;
        let prdtl = (dw0 >> 16) as usize;
        fetch_table(mem, table, prdtl.min(MAX_PRDT))
    });
    let Table { fis, packet, prdt } = match fetched {
        Ok(t) => t,
        Err(e) => return fail(port, e, mem, stats),
    };
    if fis[0] != FIS_H2D {
        return fail(port, CommandError::BadFis, mem, stats);
    }
    if fis[1] & 0x80 == 0 {
        // A control FIS: SRST set, then cleared, is a soft reset.
        if fis[15] & 0x04 == 0 {
            port.device_reset();
            signature_fis(port, mem);
        }
        port.ci &= !bit;
        return;
    }
    let command = Command { fis, packet, prdt: &prdt, mem };
    let ncq = !port.drive.info.cd && ata::is_ncq(fis[2]);
    stats.command(ncq, port.drive.info.cd && fis[2] == atapi::PACKET);
    let result = if port.drive.info.cd {
        atapi::execute(&mut port.drive, &command)
    } else {
        ata::execute(&port.drive, &command)
    };
    match result {
        Ok(done) => {
            let _ = mem.write_obj((done.bytes as u32).to_le_bytes(), GuestAddress(header_at.0.wrapping_add(4)));
            stats.bytes(done.to_guest, done.bytes);
            complete(port, bit, ncq, done, mem);
        }
        Err(e) => fail(port, e, mem, stats),
    }
}

/// A command table as fetched from guest RAM.
struct Table {
    fis: [u8; 20],
    packet: [u8; 16],
    prdt: Vec<Prd>,
}

/// Reads a command table: its FIS, ATAPI packet and PRDT.
fn fetch_table(mem: &GuestMemoryMmap, table: u64, prdtl: usize) -> Result<Table, CommandError> {
    let mut fis = [0u8; 20];
    let mut packet = [0u8; 16];
    mem.read_slice(&mut fis, GuestAddress(table)).map_err(|_| CommandError::OutsideRam)?;
    mem.read_slice(&mut packet, GuestAddress(table.wrapping_add(0x40))).map_err(|_| CommandError::OutsideRam)?;
    let mut raw = vec![0u8; 16 * prdtl];
    mem.read_slice(&mut raw, GuestAddress(table.wrapping_add(0x80))).map_err(|_| CommandError::OutsideRam)?;
    let prdt = raw
        .chunks_exact(16)
        .map(|e| {
            let addr = u64::from_le_bytes(e[0..8].try_into().unwrap_or_default());
            let dbc = u32::from_le_bytes(e[12..16].try_into().unwrap_or_default());
            // DBC is the byte count less one; bit 0 must be set (even counts).
            match (addr & 1, dbc & 1) {
                (0, 1) => Ok(Prd { addr: GuestAddress(addr), len: (dbc & 0x3f_ffff) + 1 }),
                _ => Err(CommandError::BadPrdt),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(Table { fis, packet, prdt })
}

/// A command ended well: the device's FIS goes to the received-FIS area
/// and the port raises its interrupt.
fn complete(port: &mut Port, bit: u32, ncq: bool, done: Done, mem: &GuestMemoryMmap) {
    let status = STATUS_DRDY | STATUS_DSC;
    port.tfd = status as u32;
    if ncq {
        // Set Device Bits: which queued commands finished.
        let mut fis = [0u8; 8];
        fis[0] = FIS_SDB;
        fis[1] = 0x40;
        fis[2] = status & 0x77;
        fis[4..8].copy_from_slice(&bit.to_le_bytes());
        receive_fis(port, mem, RFIS_SDB, &fis);
        port.sact &= !bit;
        port.ci &= !bit;
        port.is |= IS_SDBS;
        return;
    }
    if done.pio_in {
        let mut fis = [0u8; 20];
        fis[0] = FIS_PIO_SETUP;
        fis[1] = 0x60;
        fis[2] = status | STATUS_DRQ;
        fis[15] = status;
        fis[16..18].copy_from_slice(&(done.bytes as u16).to_le_bytes());
        receive_fis(port, mem, RFIS_PIO_SETUP, &fis);
        port.is |= IS_PSS;
    }
    let mut fis = [0u8; 20];
    fis[0] = FIS_D2H;
    fis[1] = 0x40;
    fis[2] = status;
    fis[12] = done.count;
    receive_fis(port, mem, RFIS_D2H, &fis);
    port.ci &= !bit;
    port.is |= IS_DHRS;
}

/// A command failed: the task file shows ERR with the error register, a
/// D2H FIS says so, and the port stops on TFES until the driver restarts
/// it. The slot's PxCI bit stays set, as on hardware.
fn fail(port: &mut Port, e: CommandError, mem: &GuestMemoryMmap, stats: &impl Stats) {
    stats.error(e);
    let status = STATUS_DRDY | STATUS_ERR;
    let error = e.error_register();
    port.tfd = (error as u32) << 8 | status as u32;
    let mut fis = [0u8; 20];
    fis[0] = FIS_D2H;
    fis[1] = 0x40;
    fis[2] = status;
    fis[3] = error;
    receive_fis(port, mem, RFIS_D2H, &fis);
    port.is |= IS_TFES | IS_DHRS;
}

/// Moves `len` bytes between the image at `offset` and the PRDT's
/// buffers. Refuses before moving anything if the PRDT is too short.
pub fn image_io(image: &Image, cmd: &Command, offset: u64, len: u64, to_guest: bool) -> Result<Done, CommandError> {
    let room: u64 = cmd.prdt.iter().map(|p| p.len as u64).sum();
    if room < len {
        return Err(CommandError::BadPrdt);
    }
    let mut left = len;
    let mut buffers = Vec::with_capacity(cmd.prdt.len());
    for p in cmd.prdt {
        if left == 0 {
            break;
        }
        let n = left.min(p.len as u64);
        buffers.push((p.addr, n as usize));
        left -= n;
    }
    image.transfer(cmd.mem, &buffers, offset, to_guest)?;
    Ok(Done { bytes: len, to_guest, ..Done::default() })
}

/// Copies a reply into the PRDT's buffers; returns the bytes copied (the
/// reply is cut to what the PRDT holds).
pub fn reply(cmd: &Command, data: &[u8]) -> Result<u64, CommandError> {
    let mut done = 0usize;
    for p in cmd.prdt {
        if done == data.len() {
            break;
        }
        let n = (data.len() - done).min(p.len as usize);
        cmd.mem.write_slice(&data[done..done + n], p.addr).map_err(|_| CommandError::OutsideRam)?;
        done += n;
    }
    Ok(done as u64)
}

/// Reads `len` bytes the command sends (DATA SET MANAGEMENT's ranges).
pub fn gather(cmd: &Command, len: usize) -> Result<Vec<u8>, CommandError> {
    let mut out = vec![0u8; len];
    let mut done = 0usize;
    for p in cmd.prdt {
        if done == len {
            break;
        }
        let n = (len - done).min(p.len as usize);
        cmd.mem.read_slice(&mut out[done..done + n], p.addr).map_err(|_| CommandError::OutsideRam)?;
        done += n;
    }
    if done < len {
        return Err(CommandError::BadPrdt);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capvm_ipc::BlkOptions;
    use std::cell::RefCell;

    const CLB: u64 = 0x1000;
    const FB: u64 = 0x2000;
    const TABLE: u64 = 0x3000;
    const BUF: u64 = 0x10000;
    const SECTORS: u64 = 64;
    const P0: u64 = PORTS_AT;

    #[derive(Default)]
    struct Counts {
        commands: RefCell<u64>,
        errors: RefCell<Vec<CommandError>>,
    }

    impl Stats for Counts {
        fn command(&self, _: bool, _: bool) {
            *self.commands.borrow_mut() += 1;
        }
        fn error(&self, e: CommandError) {
            self.errors.borrow_mut().push(e);
        }
        fn bytes(&self, _: bool, _: u64) {}
    }

    struct Rig {
        hba: Hba,
        mem: GuestMemoryMmap,
        path: std::path::PathBuf,
        counts: Counts,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn rig(cd: bool, read_only: bool) -> Rig {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("capvm-ahci-test-{}-{n}.img", std::process::id()));
        std::fs::write(&path, vec![0xee; (SECTORS * 512) as usize]).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(!read_only).open(&path).unwrap();
        let info = AhciDrive {
            cd,
            disk: BlkOptions {
                read_only,
                sector_size: if cd { 2048 } else { 512 },
                physical_sector_size: 512,
                size: SECTORS * 512,
                no_delete: false,
                can_discard: true,
                serial: "S".into(),
            },
            model: "M".into(),
            revision: "R".into(),
            rotation_rate: 0,
        };
        let hba = Hba::new(vec![Drive::new(Image::new(file.into()), info)]);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut r = Rig { hba, mem, path, counts: Counts::default() };
        r.w(P0 + PX_CLB, CLB as u32);
        r.w(P0 + PX_FB, FB as u32);
        r.w(P0 + PX_CMD, CMD_FRE | CMD_ST);
        r
    }

    impl Rig {
        fn w(&mut self, reg: u64, v: u32) -> Kick {
            self.hba.write(reg, 4, v as u64, Some(&self.mem))
        }
        fn r(&self, reg: u64) -> u32 {
            self.hba.read(reg, 4) as u32
        }
        /// Puts a command in `slot`: header, FIS and PRDT (address, bytes).
        fn prepare(&self, slot: u64, fis: [u8; 20], prdt: &[(u64, u32)], table: u64) {
            let dw0 = 5 | (prdt.len() as u32) << 16;
            let h = GuestAddress(CLB + 32 * slot);
            self.mem.write_obj(dw0, h).unwrap();
            self.mem.write_obj(table, GuestAddress(h.0 + 8)).unwrap();
            let t = TABLE + 0x100 * slot;
            self.mem.write_slice(&fis, GuestAddress(t)).unwrap();
            for (i, &(a, n)) in prdt.iter().enumerate() {
                self.mem.write_obj(a, GuestAddress(t + 0x80 + 16 * i as u64)).unwrap();
                self.mem.write_obj(n - 1, GuestAddress(t + 0x80 + 16 * i as u64 + 12)).unwrap();
            }
        }
        fn issue(&mut self, mask: u32) {
            assert_eq!(self.w(P0 + PX_CI, mask), Kick::Port(0));
            self.hba.run_port(0, &self.mem, &self.counts);
        }
        fn image(&self) -> Vec<u8> {
            std::fs::read(&self.path).unwrap()
        }
    }

    fn fis(command: u8, lba: u64, count: u16) -> [u8; 20] {
        let l = lba.to_le_bytes();
        let c = count.to_le_bytes();
        [0x27, 0x80, command, 0, l[0], l[1], l[2], 0x40, l[3], l[4], l[5], 0, c[0], c[1], 0, 0, 0, 0, 0, 0]
    }

    #[test]
    fn hba_generic_registers_and_reset() {
        let mut r = rig(false, false);
        assert_eq!(r.r(PI), 1);
        assert_eq!(r.r(VS), 0x0001_0301);
        assert_eq!(r.r(CAP) & 0x1f, 0, "one port");
        assert_ne!(r.r(CAP) & 1 << 30, 0, "NCQ");
        assert_eq!(r.r(P0 + PX_SIG), SIG_ATA);
        assert_eq!(r.r(P0 + PX_CMD) & (CMD_CR | CMD_FR), CMD_CR | CMD_FR);
        r.w(P0 + PX_IE, u32::MAX);
        r.w(GHC, GHC_HR);
        assert_eq!(r.r(GHC), GHC_AE, "reset clears IE and reads HR back as 0");
        assert_eq!(r.r(P0 + PX_IE), 0);
        assert_eq!(r.r(P0 + PX_CMD) & CMD_ST, 0);
        // Narrow or unaligned writes change nothing.
        r.w(P0 + PX_CLB, CLB as u32);
        assert_eq!(r.hba.write(P0 + PX_CLB, 2, 0x4000, None), Kick::None);
        assert_eq!(r.r(P0 + PX_CLB), CLB as u32);
        assert_eq!(r.hba.read(P0 + PX_CLB + 1, 2), u64::MAX);
    }

    #[test]
    fn hba_comreset_brings_the_device_back_with_its_signature_fis() {
        let mut r = rig(true, true);
        r.w(P0 + PX_SCTL, 1);
        assert_eq!(r.r(P0 + PX_SSTS), 0, "link down during COMRESET");
        r.w(P0 + PX_SCTL, 0);
        assert_eq!(r.r(P0 + PX_SSTS), SSTS_UP);
        let mut fis = [0u8; 20];
        r.mem.read_slice(&mut fis, GuestAddress(FB + RFIS_D2H)).unwrap();
        assert_eq!((fis[0], fis[4], fis[5], fis[6], fis[12]), (FIS_D2H, 0x01, 0x14, 0xeb, 0x01));
    }

    #[test]
    fn hba_write_then_read_through_multi_entry_prdts() {
        let mut r = rig(false, false);
        let data: Vec<u8> = (0..2048u32).map(|i| (i * 13) as u8).collect();
        r.mem.write_slice(&data, GuestAddress(BUF)).unwrap();
        r.prepare(0, fis(0x35, 4, 4), &[(BUF, 512), (BUF + 512, 1536)], TABLE);
        r.issue(1);
        assert_eq!(r.r(P0 + PX_CI), 0);
        assert_eq!(r.r(P0 + PX_IS) & IS_DHRS, IS_DHRS);
        assert_eq!(&r.image()[4 * 512..6 * 512 + 1024], &data[..]);
        r.prepare(1, fis(0x25, 4, 4), &[(BUF + 0x8000, 2048)], TABLE + 0x100);
        r.issue(2);
        let mut back = vec![0u8; 2048];
        r.mem.read_slice(&mut back, GuestAddress(BUF + 0x8000)).unwrap();
        assert_eq!(back, data);
        let mut prdbc = [0u8; 4];
        r.mem.read_slice(&mut prdbc, GuestAddress(CLB + 32 + 4)).unwrap();
        assert_eq!(u32::from_le_bytes(prdbc), 2048, "PRDBC says what moved");
    }

    #[test]
    fn hba_ncq_completes_with_set_device_bits() {
        let mut r = rig(false, false);
        for slot in 0..3u64 {
            let mut f = fis(0x60, slot, (slot as u16) << 3);
            f[3] = 1;
            r.prepare(slot, f, &[(BUF + 512 * slot, 512)], TABLE + 0x100 * slot);
        }
        r.w(P0 + PX_SACT, 0b111);
        r.issue(0b111);
        assert_eq!((r.r(P0 + PX_SACT), r.r(P0 + PX_CI)), (0, 0));
        assert_ne!(r.r(P0 + PX_IS) & IS_SDBS, 0);
        let mut sdb = [0u8; 8];
        r.mem.read_slice(&mut sdb, GuestAddress(FB + RFIS_SDB)).unwrap();
        assert_eq!(sdb[0], FIS_SDB);
        let mut got = vec![0u8; 1536];
        r.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
        assert!(got.iter().all(|&b| b == 0xee));
    }

    #[test]
    fn hba_hostile_commands_fail_stop_the_port_and_it_restarts() {
        let mut r = rig(false, false);
        const OUTSIDE: u64 = 1 << 40;
        type Setup = Box<dyn Fn(&Rig)>;
        let cases: Vec<(Setup, CommandError)> = vec![
            (Box::new(|r| r.prepare(0, fis(0x25, 0, 1), &[(BUF, 512)], OUTSIDE)), CommandError::OutsideRam),
            (Box::new(|r| r.prepare(0, fis(0x25, 0, 1), &[(OUTSIDE, 512)], TABLE)), CommandError::OutsideRam),
            (Box::new(|r| r.prepare(0, fis(0x25, 0, 8), &[(BUF, 512)], TABLE)), CommandError::BadPrdt),
            (Box::new(|r| r.prepare(0, fis(0x25, SECTORS, 1), &[(BUF, 512)], TABLE)), CommandError::OutOfRange),
            (Box::new(|r| r.prepare(0, fis(0xb0, 0, 0), &[], TABLE)), CommandError::Unsupported(0xb0)),
            (
                Box::new(|r| {
                    let mut f = fis(0x25, 0, 1);
                    f[0] = 0x46;
                    r.prepare(0, f, &[(BUF, 512)], TABLE)
                }),
                CommandError::BadFis,
            ),
            (
                Box::new(|r| {
                    r.prepare(0, fis(0x25, 0, 1), &[(BUF, 512)], TABLE);
                    // An odd byte count (DBC bit 0 clear).
                    r.mem.write_obj(510u32, GuestAddress(TABLE + 0x80 + 12)).unwrap();
                }),
                CommandError::BadPrdt,
            ),
        ];
        for (i, (setup, want)) in cases.iter().enumerate() {
            setup(&r);
            r.issue(1);
            assert_eq!(r.counts.errors.borrow().last(), Some(want), "case {i}");
            assert_ne!(r.r(P0 + PX_IS) & IS_TFES, 0, "case {i}");
            assert_eq!(r.r(P0 + PX_TFD) & 0xff, (STATUS_DRDY | STATUS_ERR) as u32, "case {i}");
            // The port takes nothing until restarted.
            r.prepare(1, fis(0x25, 0, 1), &[(BUF, 512)], TABLE + 0x100);
            r.issue(2);
            assert_eq!(r.r(P0 + PX_CI) & 2, 2, "case {i}: ran a command on a stopped port");
            r.w(P0 + PX_CMD, CMD_FRE);
            assert_eq!(r.r(P0 + PX_CI), 0, "stopping drops what CI held");
            r.w(P0 + PX_CMD, CMD_FRE | CMD_ST);
            r.w(P0 + PX_IS, u32::MAX);
            r.prepare(1, fis(0x25, 0, 1), &[(BUF, 512)], TABLE + 0x100);
            r.issue(2);
            assert_eq!((r.r(P0 + PX_CI), r.r(P0 + PX_TFD) & 1), (0, 0), "case {i}: port does not work after");
        }
        assert!(r.image().iter().all(|&b| b == 0xee), "a refused command changed the image");
    }

    #[test]
    fn hba_read_only_disk_refuses_writes_and_trim() {
        let mut r = rig(false, true);
        r.prepare(0, fis(0x35, 0, 1), &[(BUF, 512)], TABLE);
        r.issue(1);
        r.w(P0 + PX_CMD, CMD_FRE);
        r.w(P0 + PX_CMD, CMD_FRE | CMD_ST);
        let mut trim = fis(0x06, 0, 1);
        trim[3] = 1;
        // Eight sectors from LBA 0.
        r.mem.write_obj(8u64 << 48, GuestAddress(BUF)).unwrap();
        r.prepare(0, trim, &[(BUF, 512)], TABLE);
        r.issue(1);
        assert_eq!(
            &r.counts.errors.borrow()[..],
            &[CommandError::ReadOnly, CommandError::Unsupported(0x06)],
            "write, then TRIM"
        );
        assert!(r.image().iter().all(|&b| b == 0xee));
    }
}
