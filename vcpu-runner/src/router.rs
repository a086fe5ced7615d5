//! Where an exit goes: the platform registers here, PCI (config space and
//! BARs, routed to the function's server), a device server's port range,
//! or nowhere (reads float high, writes are dropped).

use capvm_ipc::ring::{ExitRing, Op, Request};
use capvm_ipc::stats::{Counter, CountersByKind};
use capvm_ipc::{PioRange, VmEvent};
use capvm_kernel::Vm;

use crate::flash::Flash;
use crate::fwcfg::FwCfg;
use crate::pci::{PciBus, PioResult, Target};
use crate::platform::{Outcome, Platform};

pub struct Device {
    pub name: String,
    pub pio: Vec<PioRange>,
    pub ring: ExitRing,
}

/// Exits that reached user space, by kind: the figure the ioeventfd data
/// path keeps flat.
pub struct ExitCounters {
    pub pio: Counter,
    pub mmio: Counter,
    /// Instructions completed for the host's emulator, by kind
    /// (capvm_kernel::complete::KINDS).
    pub completed: CountersByKind,
    /// Refused SIMD instructions: each began a run of native instructions
    /// (capvm_kernel::complete::Batch). completed_simd and
    /// completed_after_simd over it is how many a run took on average.
    pub simd_runs: Counter,
    /// Emulation failures run again because the code at RIP had changed.
    pub emulation_retries: Counter,
    /// Device-server answers a vCPU waited for past `exit_ring.report`.
    pub late_answers: Counter,
}

pub struct Router {
    pub vm: Vm,
    pub platform: Platform,
    pub pci: PciBus,
    pub devices: Vec<Device>,
    pub strict_io: bool,
    pub exits: ExitCounters,
    /// fw_cfg, on a firmware boot.
    pub fw_cfg: Option<std::sync::Mutex<FwCfg>>,
    /// The firmware's variable store, if it has one.
    pub flash: Option<Flash>,
}

/// What the vCPU does after an access.
pub enum Routed {
    Continue(u64),
    Stop(VmEvent),
}

impl Router {
    /// Routes one port access from vCPU `vcpu`.
    pub fn pio(&self, vcpu: u32, port: u16, size: u8, write: Option<u64>) -> Routed {
        self.exits.pio.inc();
        if let (Some(fw), true) = (&self.fw_cfg, FwCfg::owns(port)) {
            // A vCPU thread that panicked holding it took the process down.
            let mut fw = fw.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            return Routed::Continue(match write {
                Some(v) => {
                    fw.write(port, size, v);
                    0
                }
                None => fw.read(port, size),
            });
        }
        let platform = match write {
            Some(v) => self.platform.write(port, size, v),
            None => self.platform.read(port, size),
        };
        match platform {
            Outcome::Done(v) => return Routed::Continue(v),
            Outcome::Stop(e) => return Routed::Stop(e),
            Outcome::NotMine => {}
        }
        match self.pci.pio(port, size, write) {
            Some(PioResult::Done(v)) => return Routed::Continue(v),
            Some(PioResult::Config { slot, func, offset }) => {
                return Routed::Continue(self.config(vcpu, slot, func, offset, size, write))
            }
            None => {}
        }
        if let Some(dev) = self.devices.iter().find(|d| d.pio.iter().any(|r| r.contains(port))) {
            let op = if write.is_some() { Op::PioWrite } else { Op::PioRead };
            let req = Request { op, region: 0, addr: port as u64, size, data: write.unwrap_or(0) };
            return Routed::Continue(dev.ring.call(vcpu, req));
        }
        if self.strict_io {
            return Routed::Stop(VmEvent::UnhandledIo { vcpu, port, write: write.is_some() });
        }
        Routed::Continue(u64::MAX)
    }

    /// Routes one MMIO access: the variable store, ECAM or a mapped BAR;
    /// anything else (the boot ROM's writes among it) reads all-ones and
    /// drops writes.
    pub fn mmio(&self, vcpu: u32, addr: u64, size: u8, write: Option<u64>) -> u64 {
        self.exits.mmio.inc();
        if let Some(flash) = self.flash.as_ref().filter(|f| f.owns(addr)) {
            return match write {
                Some(v) => {
                    flash.write(addr, size, v);
                    0
                }
                None => flash.read(addr, size),
            };
        }
        match self.pci.mmio(addr) {
            Some(Target::Config { slot, func, offset }) => self.config(vcpu, slot, func, offset, size, write),
            Some(Target::Bar { function, bar, offset }) => {
                let ring = &self.devices[function.device].ring;
                let op = if write.is_some() { Op::MmioWrite } else { Op::MmioRead };
                let v = ring.call(vcpu, Request { op, region: bar, addr: offset, size, data: write.unwrap_or(0) });
                if write.is_some() {
                    self.pci.bar_written(&self.vm, ring, vcpu, function, bar, offset, size);
                }
                v
            }
            None => u64::MAX,
        }
    }

    fn config(&self, vcpu: u32, slot: u8, func: u8, offset: u64, size: u8, write: Option<u64>) -> u64 {
        match write {
            Some(v) => {
                self.pci.config_write(&self.vm, &self.devices, vcpu, slot, func, offset, size, v);
                0
            }
            None => self.pci.config_read(&self.devices, vcpu, slot, func, offset, size),
        }
    }
}
