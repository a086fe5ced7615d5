//! capvm-fbuf: the display's registers in their own process. It holds its
//! exit ring and the display state page, where it publishes the mode the
//! guest sets; no guest RAM, no framebuffer (the runner maps that into the
//! guest, the VNC server reads it), no host file. Started by the broker
//! with its control socket at fd 3.

use std::os::fd::{AsFd, AsRawFd};

use capvm_fbuf::dispi::{Change, Dispi};
use capvm_fbuf::edid;
use capvm_fbuf::layout::{self, DISPI_OFFSET, DISPI_SIZE, EDID_OFFSET, EDID_SIZE, EXT_OFFSET, MMIO_BAR};
use capvm_ipc::display::DisplayState;
use capvm_ipc::ring::{ExitRing, Op};
use capvm_ipc::stats::Counter;
use capvm_ipc::{Channel, DeviceBackend, DeviceConfig, ToBroker, PROTO_VERSION};
use capvm_pci::server::ServerError;
use capvm_pci::{ConfigSpace, Identity};

fn main() {
    capvm_ipc::child_main("capvm-fbuf", run);
}

struct Counters {
    config_accesses: Counter,
    mmio_accesses: Counter,
    mode_changes: Counter,
    unsupported_modes: Counter,
}

struct Display {
    config: ConfigSpace,
    dispi: Dispi,
    edid: [u8; 128],
    state: DisplayState,
    counters: Counters,
}

fn run(channel: &Channel) -> Result<(), ServerError> {
    let mut started = capvm_pci::server::start(channel)?;
    let DeviceBackend::Fbuf(options) = started.config.backend else {
        return Err(ServerError::Protocol("capvm-fbuf was started for another device".into()));
    };
    check_layout(&started.config)?;
    let state_fd = started.backend.first().ok_or_else(|| ServerError::Protocol("no display state page".into()))?;
    let state = DisplayState::attach(state_fd.as_fd()).map_err(ServerError::Stats)?;
    let grants = vec![capvm_policy::FdGrant::new(state_fd.as_raw_fd(), "display state page (memfd, mapped)", &[])];
    let stats = &mut started.stats;
    let counters = Counters {
        config_accesses: stats.counter("config_accesses"),
        mmio_accesses: stats.counter("mmio_accesses"),
        mode_changes: stats.counter("mode_changes"),
        unsupported_modes: stats.counter("unsupported_modes"),
    };
    started.confine(channel, grants, Vec::new(), Vec::new())?;

    // QEMU's bochs-display: drivers match these ids.
    let mut config = ConfigSpace::new(&Identity {
        vendor: 0x1234,
        device: 0x1111,
        revision: 2,
        class: [0x03, 0x80, 0x00],
        subsystem_vendor: 0x1af4,
        subsystem: 0x1100,
    });
    for bar in &started.config.function.bars {
        config.add_bar(bar);
    }
    let mut display =
        Display { config, dispi: Dispi::default(), edid: edid::block(options.width, options.height), state, counters };
    display.state.publish(None);
    channel.send(&ToBroker::Ready { version: PROTO_VERSION }, &[])?;
    serve(channel, &started.ring, &mut display)
}

/// The function the broker laid out must be the one this server answers.
fn check_layout(cfg: &DeviceConfig) -> Result<(), ServerError> {
    let f = &cfg.function;
    let addr = |i: u8| f.bars.iter().find(|b| b.index == i).map_or(0, |b| b.addr);
    if *f != layout::function(f.slot, f.func, addr(layout::VRAM_BAR), addr(MMIO_BAR)) {
        return Err(ServerError::Protocol(format!("{f:?} is not a display layout")));
    }
    Ok(())
}

impl Display {
    fn mmio_read(&self, offset: u64, size: u8) -> u64 {
        let bytes = |base: u64, data: &[u8]| {
            let at = (offset - base) as usize;
            (0..size as usize).fold(0u64, |v, i| v | (*data.get(at + i).unwrap_or(&0) as u64) << (8 * i))
        };
        match offset {
            o if (EDID_OFFSET..EDID_OFFSET + EDID_SIZE).contains(&o) => bytes(EDID_OFFSET, &self.edid),
            o if (DISPI_OFFSET..DISPI_OFFSET + DISPI_SIZE).contains(&o) && size == 2 && o.is_multiple_of(2) => {
                self.dispi.read(((o - DISPI_OFFSET) / 2) as u16) as u64
            }
            // QEMU's extended registers: their size, and little-endian.
            o if o == EXT_OFFSET && size == 4 => 8,
            o if o == EXT_OFFSET + 4 && size == 4 => 0x1e1e_1e1e,
            _ => 0,
        }
    }

    fn mmio_write(&mut self, offset: u64, size: u8, value: u64) {
        if (DISPI_OFFSET..DISPI_OFFSET + DISPI_SIZE).contains(&offset) && size == 2 && offset.is_multiple_of(2) {
            match self.dispi.write(((offset - DISPI_OFFSET) / 2) as u16, value as u16) {
                Change::None => {}
                Change::Mode(mode) => {
                    self.counters.mode_changes.inc();
                    self.state.publish(mode);
                }
                Change::UnsupportedDepth(_) => {
                    self.counters.unsupported_modes.inc();
                    self.state.publish(None);
                }
            }
        }
        // The EDID is read-only; the byte-order register stays little-endian.
    }
}

fn serve(channel: &Channel, ring: &ExitRing, d: &mut Display) -> Result<(), ServerError> {
    capvm_pci::server::serve(channel, ring, &[], |_| {
        ring.serve_polling(|_, req| match req.op {
            Op::ConfigRead => {
                d.counters.config_accesses.inc();
                d.config.read(req.addr, req.size)
            }
            Op::ConfigWrite => {
                d.counters.config_accesses.inc();
                d.config.write(req.addr, req.size, req.data);
                0
            }
            Op::MmioRead if req.region == MMIO_BAR => {
                d.counters.mmio_accesses.inc();
                d.mmio_read(req.addr, req.size)
            }
            Op::MmioWrite if req.region == MMIO_BAR => {
                d.counters.mmio_accesses.inc();
                d.mmio_write(req.addr, req.size, req.data);
                0
            }
            _ => u64::MAX,
        });
        Ok(())
    })
}
