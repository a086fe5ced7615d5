//! `-s N,virtio-net,TAP[,mac=][,mtu=]`: a NIC on a tap, served by
//! `capvm-virtio-net`.

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;

use capvm_ipc::{DeviceBackend, NetOptions};
use capvm_policy::{roles, FdGrant, SyscallRule};

use super::{DeviceError, Opened, ServedDevice, SlotOptions};
use crate::config::ConfigError;

/// bhyve's network-backend options.
pub const OPTIONS: &[&str] = &["backend", "mac", "mtu"];

/// A NIC, as its slot's options configure it.
#[derive(Debug, Clone, PartialEq)]
pub struct NicConfig {
    /// The tap to open, or create if it does not exist.
    pub tap: String,
    pub mac: [u8; 6],
    pub mtu: u16,
}

pub fn parse(o: &SlotOptions) -> Result<Box<dyn ServedDevice>, ConfigError> {
    let at = o.at();
    let tap = o
        .get("backend")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ConfigError(format!("{at}: give a tap: -s {},virtio-net,tap0", o.slot)))?;
    // IFNAMSIZ is 16 with the NUL; the kernel also refuses '/', ':' and blanks.
    if tap.len() > 15 || tap.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) || tap == "." || tap == ".." {
        return Err(ConfigError(format!(
            "{at}: '{tap}' is not an interface name (at most 15 characters, no '/', ':' or blanks)"
        )));
    }
    let mac = match o.get("mac") {
        None => default_mac(o.vm_name, o.slot, o.func),
        Some(m) => parse_mac(m).ok_or_else(|| {
            ConfigError(format!("{at}: mac={m}: give six hex bytes like 02:00:00:00:00:01, unicast (first byte even)"))
        })?,
    };
    let mtu = match o.get("mtu") {
        None => 1500,
        Some(v) => v
            .parse::<u16>()
            .ok()
            .filter(|&m| m >= 68)
            .ok_or_else(|| ConfigError(format!("{at}: mtu={v}: give 68 to 65535")))?,
    };
    Ok(Box::new(NicConfig { tap: tap.to_string(), mac, mtu }))
}

impl ServedDevice for NicConfig {
    /// Opens (or creates) the tap.
    fn open(&self) -> Result<Opened, DeviceError> {
        let tap = open_tap(&self.tap).map_err(|source| DeviceError::Tap { name: self.tap.clone(), source })?;
        Ok(Opened::server(DeviceBackend::Net(NetOptions { mac: self.mac, mtu: self.mtu }), vec![tap]))
    }

    fn backend_policy(&self, fds: &[i32]) -> (Vec<FdGrant>, Vec<SyscallRule>) {
        roles::virtio_net_backend(fds[0])
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A unicast MAC written as six hex bytes separated by ':'.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| (b.len() == 2).then(|| u8::from_str_radix(b, 16).ok()).flatten())
        .collect::<Option<_>>()?;
    let mac: [u8; 6] = bytes.try_into().ok()?;
    (mac[0] & 1 == 0 && mac != [0; 6]).then_some(mac)
}

/// A MAC that stays the same for the same VM name and slot: locally
/// administered (02:...), the rest an FNV-1a hash of "name/slot/func".
pub fn default_mac(vm_name: &str, slot: u8, func: u8) -> [u8; 6] {
    let mut h: u32 = 0x811c_9dc5;
    for b in format!("{vm_name}/{slot}/{func}").bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    let [a, b, c, d] = h.to_be_bytes();
    [0x02, 0xc7, a, b, c, d]
}

/// A tap could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] std::io::Error),
    #[error("in use by another process")]
    Busy,
    #[error("exists and is not a tap ({0})")]
    NotATap(#[source] std::io::Error),
    #[error("not allowed to attach ({0}): run capvm as root or give the tap to this user")]
    NotAllowed(#[source] std::io::Error),
    #[error("{0}")]
    Attach(#[source] std::io::Error),
    #[error("cannot set its virtio header size: {0}")]
    HeaderSize(#[source] std::io::Error),
}

/// Attaches to the tap `name` in the broker's network namespace, creating
/// it if it does not exist (a tap capvm creates goes away with the VM).
/// Frames carry virtio 1.x's 12-byte header, so the server moves them
/// unchanged; the fd is non-blocking for the server's poll loop.
fn open_tap(name: &str) -> Result<OwnedFd, TapError> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    // struct ifreq: the name, then the flags (a short) in the union.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tun);
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `ifr` is sized for.
    if unsafe { libc::ioctl(fd, libc::TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) => TapError::Busy,
            Some(libc::EINVAL) => TapError::NotATap(e),
            Some(libc::EPERM) => TapError::NotAllowed(e),
            _ => TapError::Attach(e),
        });
    }
    let header: libc::c_int = capvm_virtio::layout::NET_HEADER_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int.
    if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &header) } != 0 {
        return Err(TapError::HeaderSize(std::io::Error::last_os_error()));
    }
    Ok(File::into(tun))
}
