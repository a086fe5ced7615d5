//! Where a PIO exit goes: the platform registers here, a device server's
//! exit ring, or nowhere (reads float high, writes are dropped).

use capvm_ipc::ring::{ExitRing, Op, Request};
use capvm_ipc::{PioRange, VmEvent};

use crate::platform::{Outcome, Platform};

pub struct Device {
    pub name: String,
    pub pio: Vec<PioRange>,
    pub ring: ExitRing,
}

pub struct Router {
    pub platform: Platform,
    pub devices: Vec<Device>,
    pub strict_io: bool,
}

/// What the vCPU does after an access.
pub enum Routed {
    Continue(u64),
    Stop(VmEvent),
}

impl Router {
    /// Routes one port access from vCPU `vcpu`.
    pub fn pio(&self, vcpu: u32, port: u16, size: u8, write: Option<u64>) -> Routed {
        let platform = match write {
            Some(v) => self.platform.write(port, size, v),
            None => self.platform.read(port, size),
        };
        match platform {
            Outcome::Done(v) => return Routed::Continue(v),
            Outcome::Stop(e) => return Routed::Stop(e),
            Outcome::NotMine => {}
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
}
