//! capvm-fbuf: the display's registers in their own process. It holds its
//! exit ring and the display state page, where it publishes the mode the
//! guest sets; no guest RAM, no framebuffer (the runner maps that into the
//! guest, the VNC server reads it), no host file. Its option ROM, if it
//! has one, it reads into its own memory before it confines itself.
//! Started by the broker with its control socket at fd 3.

use std::os::fd::{AsFd, AsRawFd};

use capvm_fbuf::dispi::{Change, Dispi};
use capvm_fbuf::edid;
use capvm_fbuf::layout::{self, DISPI_OFFSET, DISPI_SIZE, EDID_OFFSET, EDID_SIZE, EXT_OFFSET, MMIO_BAR};
use capvm_ipc::display::DisplayState;
use capvm_ipc::ring::{ExitRing, Op};
use capvm_ipc::stats::Counter;
use capvm_ipc::{Channel, DeviceBackend, DeviceConfig, ToBroker, PROTO_VERSION, ROM_BAR};
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
    rom_reads: Counter,
}

struct Display {
    config: ConfigSpace,
    dispi: Dispi,
    edid: [u8; 128],
    /// The option ROM's bytes (empty: none); the rest of its BAR reads 0.
    rom: Vec<u8>,
    state: DisplayState,
    counters: Counters,
}

fn run(channel: &Channel) -> Result<(), ServerError> {
    let mut started = capvm_pci::server::start(channel)?;
    let DeviceBackend::Fbuf(options) = started.config.backend else {
        return Err(ServerError::Protocol("capvm-fbuf was started for another device".into()));
    };
    check_layout(&started.config, options.rom_size.is_some())?;
    let rom = match (options.rom_size, started.backend.get(1)) {
        (Some(len), Some(fd)) => read_rom(fd.as_fd(), len)?,
        _ => Vec::new(),
    };
    started.backend.truncate(1);
    let state_fd = started.backend.first().ok_or_else(|| ServerError::Protocol("no display state page".into()))?;
    let state = DisplayState::attach(state_fd.as_fd()).map_err(ServerError::Stats)?;
    let grants = vec![capvm_policy::FdGrant::new(state_fd.as_raw_fd(), "display state page (memfd, mapped)", &[])];
    let stats = &mut started.stats;
    let counters = Counters {
        config_accesses: stats.counter("config_accesses"),
        mmio_accesses: stats.counter("mmio_accesses"),
        mode_changes: stats.counter("mode_changes"),
        unsupported_modes: stats.counter("unsupported_modes"),
        rom_reads: stats.counter("rom_reads"),
    };
    started.confine(channel, grants, Vec::new(), Vec::new())?;

    // QEMU's bochs-display: drivers match these ids.
    let mut config = ConfigSpace::new(&Identity {
        vendor: layout::VENDOR,
        device: layout::DEVICE,
        revision: 2,
        class: [0x03, 0x80, 0x00],
        subsystem_vendor: 0x1af4,
        subsystem: 0x1100,
    });
    for bar in &started.config.function.bars {
        config.add_bar(bar);
    }
    let edid = edid::block(options.width, options.height);
    let mut display = Display { config, dispi: Dispi::default(), edid, rom, state, counters };
    // A directly booted kernel was told the screen is on: as a BIOS
    // would leave it, in the preferred mode with its framebuffer decoding.
    let start = match options.preferred_mode_at_start {
        true => {
            display.config.put(capvm_pci::config::COMMAND, &capvm_pci::config::COMMAND_MEMORY.to_le_bytes());
            display.dispi.set_mode(options.width as u16, options.height as u16)
        }
        false => Change::Mode(None),
    };
    display.state.publish(match start {
        Change::Mode(mode) => mode,
        _ => None,
    });
    channel.send(&ToBroker::Ready { version: PROTO_VERSION }, &[])?;
    serve(channel, &started.ring, &mut display)
}

/// The function the broker laid out must be the one this server answers.
fn check_layout(cfg: &DeviceConfig, has_rom: bool) -> Result<(), ServerError> {
    let f = &cfg.function;
    let addr = |i: u8| f.bars.iter().find(|b| b.index == i).map_or(0, |b| b.addr);
    let rom = has_rom.then(|| addr(ROM_BAR));
    if *f != layout::function(f.slot, f.func, addr(layout::VRAM_BAR), addr(MMIO_BAR), rom) {
        return Err(ServerError::Protocol(format!("{f:?} is not a display layout")));
    }
    Ok(())
}

impl Display {
    fn mmio_read(&self, offset: u64, size: u8) -> u64 {
        match offset {
            o if (EDID_OFFSET..EDID_OFFSET + EDID_SIZE).contains(&o) => read_le(&self.edid, o - EDID_OFFSET, size),
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

/// `size` bytes of `data` at `at`, little-endian, as memory reads: past
/// its end reads 0.
fn read_le(data: &[u8], at: u64, size: u8) -> u64 {
    let byte = |i: u64| at.checked_add(i).and_then(|a| data.get(usize::try_from(a).ok()?)).copied().unwrap_or(0);
    (0..size.min(8) as u64).fold(0, |v, i| v | (byte(i) as u64) << (8 * i))
}

/// The option ROM's `len` bytes from the broker's sealed memfd.
fn read_rom(fd: std::os::fd::BorrowedFd, len: u32) -> Result<Vec<u8>, ServerError> {
    if len as u64 > layout::ROM_SIZE {
        return Err(ServerError::Protocol(format!("an option ROM of {len} bytes does not fit its BAR")));
    }
    let mut rom = vec![0u8; len as usize];
    let mut got = 0;
    while got < rom.len() {
        match nix::sys::uio::pread(fd, &mut rom[got..], got as i64) {
            Ok(0) => return Err(ServerError::Protocol(format!("the option ROM ends at {got} of {len} bytes"))),
            Ok(n) => got += n,
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(ServerError::Protocol(format!("reading the option ROM: {e}"))),
        }
    }
    Ok(rom)
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
            Op::MmioRead if req.region == ROM_BAR => {
                d.counters.rom_reads.inc();
                read_le(&d.rom, req.addr, req.size)
            }
            Op::MmioWrite if req.region == ROM_BAR => 0,
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
