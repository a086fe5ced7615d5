//! `-s N,fbuf,tcp=[IP:]PORT,w=W,h=H[,password=P]`: a display. Three
//! processes share it: `capvm-fbuf` answers its registers (bochs-display)
//! and publishes the guest's mode in the display state page; the runner
//! maps the framebuffer (VRAM) at its BAR 0; `capvm-vnc` serves the
//! picture to viewers from the socket the broker bound here. The VNC
//! server is the one process that parses bytes from the network: it holds
//! the listening socket, VRAM and the state page read-only, and nothing
//! of the guest.

use std::any::Any;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use capvm_fbuf::layout;
use capvm_ipc::display::{self, MAX_SIZE, MIN_SIZE};
use capvm_ipc::{DeviceBackend, FbufOptions};
use capvm_policy::{FdGrant, SyscallRule};

use super::{DeviceError, Opened, Served, ServedDevice, SlotOptions};
use crate::config::ConfigError;

/// bhyve's fbuf options.
pub const OPTIONS: &[&str] = &["tcp", "rfb", "w", "h", "vga", "wait", "password", "rom"];

pub const SERVED: Served = Served {
    server: "capvm-fbuf",
    layout: |slot, func, device, alloc| {
        let vram = alloc.bar(display::VRAM_SIZE)?;
        let mmio = alloc.bar(layout::MMIO_SIZE)?;
        let has_rom = device.as_any().downcast_ref::<FbufConfig>().is_some_and(|c| c.rom.is_some());
        let rom = if has_rom { Some(alloc.bar(layout::ROM_SIZE)?) } else { None };
        Ok(layout::function(slot, func, vram, mmio, rom))
    },
    parse,
};

/// bhyve's defaults: 1024x768 on 127.0.0.1:5900.
const DEFAULT_ADDRESS: &str = "127.0.0.1:5900";
const DEFAULT_SIZE: (u32, u32) = (1024, 768);
/// RFB's VNC Authentication uses the first 8 bytes of the password.
const PASSWORD_MAX: usize = 8;
/// SeaBIOS's VGA BIOS for this device, from Debian's seabios package.
pub const DEFAULT_ROM: &str = "/usr/share/seabios/vgabios-bochs-display.bin";

#[derive(Debug, Clone, PartialEq)]
pub struct FbufConfig {
    pub address: SocketAddr,
    pub width: u32,
    pub height: u32,
    pub password: Option<String>,
    /// bhyve's `wait`: the vCPUs start when the first viewer is in.
    pub wait: bool,
    /// The display's option ROM (`rom=`), behind its expansion-ROM BAR: a
    /// BIOS runs it to put its screen on the display (SeaBIOS's VGA BIOS
    /// for this device); UEFI drives the device itself and skips it. None
    /// with `rom=off`, or with no `rom=` when [`DEFAULT_ROM`] is not
    /// installed; a path given must be there.
    pub rom: Option<PathBuf>,
}

/// The ROM's bytes, checked to be an option ROM that fits its BAR.
fn read_option_rom(path: &Path) -> Result<Vec<u8>, DeviceError> {
    let bad = |why: String| DeviceError::OptionRom { path: path.display().to_string(), why };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    check_option_rom(&bytes).map_err(bad)?;
    Ok(bytes)
}

/// An x86 option ROM: the 0x55 0xaa signature, and a length (byte 2, in
/// 512-byte blocks) that the file holds and a BIOS has room for.
fn check_option_rom(rom: &[u8]) -> Result<(), String> {
    match rom {
        [0x55, 0xaa, blocks, ..] if *blocks as usize * 512 > rom.len() => {
            Err(format!("its header says {} bytes but the file has {}", *blocks as usize * 512, rom.len()))
        }
        [0x55, 0xaa, 0, ..] => Err("its header says it is empty".into()),
        [0x55, 0xaa, ..] if rom.len() as u64 > layout::ROM_SIZE => {
            Err(format!("{} bytes; the display's ROM BAR holds {}", rom.len(), layout::ROM_SIZE))
        }
        [0x55, 0xaa, ..] => Ok(()),
        _ => Err("not an option ROM (no 0x55 0xaa signature)".into()),
    }
}

/// What the VNC server gets, opened: the listening socket, VRAM and the
/// state page (the runner gets VRAM too, the fbuf server the state page).
pub struct DisplayHost {
    pub listener: OwnedFd,
    pub vram: OwnedFd,
    pub state: OwnedFd,
    /// The input socket (SOCK_SEQPACKET): the VNC server writes viewers'
    /// keys and motion, the i8042 server reads them.
    pub input_tx: OwnedFd,
    pub input_rx: OwnedFd,
    pub password: Option<String>,
    pub wait: bool,
    pub width: u32,
    pub height: u32,
}

pub fn parse(o: &SlotOptions) -> Result<Box<dyn ServedDevice>, ConfigError> {
    let at = o.at();
    let bad = |what: String| ConfigError(format!("{at}: {what}"));
    let address = match (o.get("tcp"), o.get("rfb")) {
        (Some(_), Some(_)) => return Err(bad("give tcp= or rfb=, not both".into())),
        (Some(a), None) | (None, Some(a)) => parse_address(a)
            .ok_or_else(|| bad(format!("'{a}' is not [IP:]PORT (e.g. 0.0.0.0:5900, [::1]:5901, 5900)")))?,
        (None, None) => DEFAULT_ADDRESS.parse().map_err(|_| bad("default address".into()))?,
    };
    let size = |key: &str, default: u32, (min, max): (u32, u32)| match o.get(key) {
        None => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| bad(format!("{key}={v}: give {min} to {max}"))),
    };
    let width = size("w", DEFAULT_SIZE.0, (MIN_SIZE.0, MAX_SIZE.0))?;
    let height = size("h", DEFAULT_SIZE.1, (MIN_SIZE.1, MAX_SIZE.1))?;
    match o.get("vga") {
        None | Some("off") => {}
        Some(v) => return Err(bad(format!("vga={v}: capvm's display has no VGA (legacy VGA modes); give vga=off"))),
    }
    let wait = o.flag("wait")?;
    let password = o.get("password").map(str::to_string);
    if password.as_ref().is_some_and(|p| p.is_empty() || p.len() > PASSWORD_MAX) {
        return Err(bad(format!("password: give 1 to {PASSWORD_MAX} characters (VNC Authentication uses 8)")));
    }
    // The default is looked up once, here: the layout, the fd count and
    // open() then agree on whether there is a ROM.
    let rom = match o.get("rom") {
        None => Some(PathBuf::from(DEFAULT_ROM)).filter(|p| p.exists()),
        Some("off") => None,
        Some("") => return Err(bad("rom: give a PATH to the display's option ROM, or off".into())),
        Some(p) => Some(p.into()),
    };
    Ok(Box::new(FbufConfig { address, width, height, password, wait, rom }))
}

/// `IP:PORT`, `[IPv6]:PORT` or `PORT` (on 127.0.0.1).
fn parse_address(s: &str) -> Option<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().ok()
}

impl ServedDevice for FbufConfig {
    /// Binds the VNC socket, makes VRAM and the state page.
    fn open(&self) -> Result<Opened, DeviceError> {
        let os = |what| move |e: nix::Error| DeviceError::Os { what, source: e.into() };
        let listener = TcpListener::bind(self.address)
            .map_err(|source| DeviceError::Listen { address: self.address.to_string(), source })?;
        let state = display::create_state().map_err(os("cannot create the display state page"))?;
        let vram = display::create_vram().map_err(os("cannot create the framebuffer"))?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|source| DeviceError::Os { what: "dup", source });
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (input_tx, input_rx) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(os("cannot create the input socket"))?;
        // One way only: the VNC server can write events, never read what
        // the i8042 side could send.
        nix::sys::socket::shutdown(input_tx.as_raw_fd(), nix::sys::socket::Shutdown::Read)
            .map_err(os("input socket"))?;
        nix::sys::socket::shutdown(input_rx.as_raw_fd(), nix::sys::socket::Shutdown::Write)
            .map_err(os("input socket"))?;
        let host = DisplayHost {
            listener: listener.into(),
            vram,
            state: dup(&state)?,
            input_tx,
            input_rx,
            password: self.password.clone(),
            wait: self.wait,
            width: self.width,
            height: self.height,
        };
        let mut fds = vec![state];
        let rom = self.rom.as_deref().map(read_option_rom).transpose()?;
        if let Some(bytes) = &rom {
            fds.push(capvm_ipc::shm::sealed_copy("capvm-option-rom", bytes).map_err(os("cannot hold the option ROM"))?);
        }
        let rom_size = rom.map(|r| r.len() as u32);
        let backend = DeviceBackend::Fbuf(FbufOptions {
            width: self.width,
            height: self.height,
            rom_size,
            preferred_mode_at_start: false,
        });
        Ok(Opened { backend, fds, display: Some(host) })
    }

    fn needs_guest_ram(&self) -> bool {
        false
    }

    /// The state page, and the ROM's memfd (read and closed before the
    /// server confines itself).
    fn backend_fd_count(&self) -> usize {
        1 + usize::from(self.rom.is_some())
    }

    fn backend_policy(&self, fds: &[i32]) -> (Vec<FdGrant>, Vec<SyscallRule>) {
        (vec![FdGrant::new(fds[0], "display state page (memfd, mapped)", &[])], Vec::new())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_option_rom_has_its_signature_and_the_length_it_claims() {
        let rom = |blocks: u8, len: usize| {
            let mut r = vec![0u8; len];
            r[..3].copy_from_slice(&[0x55, 0xaa, blocks]);
            r
        };
        assert_eq!(check_option_rom(&rom(56, 56 * 512)), Ok(()), "Debian's 28 KiB VGA BIOS");
        assert!(check_option_rom(&rom(4, 4096)).is_ok(), "a file may run past the image");
        assert!(check_option_rom(b"hello").unwrap_err().contains("no 0x55 0xaa"));
        assert!(check_option_rom(&[0x55]).unwrap_err().contains("no 0x55 0xaa"));
        assert!(check_option_rom(&rom(0, 512)).unwrap_err().contains("empty"));
        assert!(check_option_rom(&rom(8, 1024)).unwrap_err().contains("says 4096 bytes but the file has 1024"));
        let big = rom(255, 128 << 10);
        assert!(check_option_rom(&big).unwrap_err().contains("ROM BAR holds 65536"));
    }

    #[test]
    fn a_rom_that_cannot_be_read_is_named_in_the_error() {
        let e = read_option_rom(Path::new("/nonexistent/rom.bin")).unwrap_err().to_string();
        assert!(e.starts_with("option ROM /nonexistent/rom.bin: "), "{e}");
    }
}
