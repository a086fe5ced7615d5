//! The control messages. Fds travel beside a message; which fds, in which
//! order, is written once, in [`crate::fds`].

use bincode::{Decode, Encode};

/// Bumped whenever a message, a message's fds or the ring layout changes
/// incompatibly. `tests::wire_format_is_pinned_to_the_protocol_version`
/// fails until it is.
pub const PROTO_VERSION: u32 = 17;

/// Broker to child.
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub enum ToChild {
    /// Start the vCPU runner; fds: [`crate::StartRunnerFds`].
    StartRunner(RunnerConfig),
    /// Start a UART server; fds: [`crate::StartUartFds`].
    StartUart(UartConfig),
    /// Start a PCI device server (virtio, AHCI, fbuf); fds: [`crate::StartDeviceFds`].
    StartDevice(DeviceConfig),
    /// Start the VNC server of a display; fds: [`crate::StartVncFds`].
    StartVnc(VncConfig),
    /// Start the i8042 server (PS/2 keyboard and mouse); fds: [`crate::StartPs2Fds`].
    StartPs2(Ps2Config),
    /// To a runner started with `hold_vcpus`: run them now.
    Go,
    /// Flush what is pending and exit.
    Shutdown,
}

/// Child to broker.
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub enum ToBroker {
    /// Start-up is done; the child speaks `version`.
    Ready { version: u32 },
    /// The guest did something that ends this VM run.
    Event(VmEvent),
    /// The child cannot go on; one line saying why.
    Fatal(String),
    /// The child entered its sandbox; what it holds and how it is confined.
    /// Carries one fd: its seccomp filter's user-notification listener,
    /// through which the kernel reports every forbidden syscall to the
    /// broker (the child keeps no copy).
    Sandboxed(SandboxReport),
    /// From a VNC server started with `wait`: the first viewer is in.
    ViewerConnected,
    /// From the runner: a device server has not answered a vCPU's access
    /// for `waited_ms` (past `exit_ring.report`); said once per wait.
    Late { device: String, vcpu: u32, waited_ms: u64 },
}

/// What a sandboxed child reports about itself, for the audit.
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct SandboxReport {
    pub role: String,
    /// Allowed syscalls in its seccomp filter.
    pub allowed_syscalls: u32,
    pub namespaces: Vec<String>,
    /// "enforced (ABI n)", "partially enforced", "not supported".
    pub landlock: String,
    pub fds: Vec<FdReport>,
    /// How long entering the sandbox took, in microseconds.
    pub enter_us: u64,
}

#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct FdReport {
    pub fd: i32,
    pub what: String,
    /// Capsicum names, e.g. "CAP_READ".
    pub rights: Vec<String>,
    /// For CAP_IOCTL: the allowed commands by name.
    pub ioctls: Vec<String>,
}

/// One forbidden syscall, as the kernel reported it to the broker.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq)]
pub struct ViolationRecord {
    pub nr: u64,
    pub args: [u64; 6],
    /// Where the syscall was made.
    pub ip: u64,
    /// The broker killed the process (sandbox.violations=kill); else the
    /// syscall returned EPERM and it went on.
    pub killed: bool,
}

/// What ends a VM run; maps to bhyve's exit statuses.
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub enum VmEvent {
    /// Reset through port 0xcf9 or the i8042: exit 0.
    Reboot,
    /// ACPI S5 through PM1a_CNT: exit 1.
    PowerOff,
    /// Every vCPU halted with interrupts disabled: exit 2.
    Halt,
    /// Triple fault (KVM_EXIT_SHUTDOWN): exit 3. RIP and CPL as KVM left
    /// them (often the instruction whose exception could not be delivered).
    TripleFault { vcpu: u32, rip: u64, cpl: u8 },
    /// KVM could not run a guest instruction: exit 4.
    InternalError(InternalErrorReport),
    /// A guest access to an I/O port nothing emulates, with `-e`: exit 4.
    UnhandledIo { vcpu: u32, port: u16, write: bool },
}

/// Where and on what KVM gave up (KVM_EXIT_INTERNAL_ERROR).
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct InternalErrorReport {
    pub vcpu: u32,
    pub suberror: u32,
    pub rip: u64,
    pub cpl: u8,
    /// Up to 15 bytes at RIP; empty if RIP did not translate.
    pub bytes: Vec<u8>,
    /// What the runner tried before giving up ("xrstors is not completed;
    /// ran again 3 times"); empty if it tried nothing.
    pub tried: String,
}

/// Everything the vCPU runner needs besides its fds.
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct RunnerConfig {
    pub vcpus: u32,
    pub memory: Vec<MemoryRegion>,
    pub boot: BootState,
    /// The host's KVM emulates guest CPL0 code (kvm_pvm): hide from CPUID
    /// what its instruction emulator cannot execute.
    pub hide_unemulated_cpuid: bool,
    pub devices: Vec<DeviceRoute>,
    /// PCI functions the runner answers itself: (slot, function, kind).
    pub bridges: Vec<(u8, u8, BridgeKind)>,
    /// bhyve `-e`: an access to an unemulated port stops the VM.
    pub strict_io: bool,
    /// bhyve `-S`: wire guest memory.
    pub wire_memory: bool,
    /// What firmware reads through fw_cfg (a firmware boot only).
    pub fw_cfg: Option<FwCfgItems>,
    /// fbuf's `wait`: the vCPUs start at the broker's Go, not at once.
    pub hold_vcpus: bool,
    /// The firmware's variable store (`-l bootrom,ROM,VARFILE`): a flash
    /// beside the ROM, its file among the runner's fds.
    pub flash: Option<FlashSpec>,
    /// How long a vCPU waits for a device server's answer before the
    /// server is reported, and before the VM stops (milliseconds; 0: never).
    pub ring_deadlines: RingDeadlines,
    pub sandbox: SandboxConfig,
}

/// `exit_ring.report` and `exit_ring.deadline`, in milliseconds (0: never).
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingDeadlines {
    pub report_ms: u64,
    pub stop_ms: u64,
}

/// Where the variable store's flash sits: `size` bytes of its file at
/// `guest_addr`. Every access exits (it speaks CFI commands).
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashSpec {
    pub guest_addr: u64,
    pub size: u64,
}

/// fw_cfg's contents: numbered items and named files (whose keys follow
/// from 0x20 in this order). The runner adds the signature, the ID and the
/// file directory.
#[derive(Encode, Decode, Debug, Clone, PartialEq, Default)]
pub struct FwCfgItems {
    pub items: Vec<(u16, Vec<u8>)>,
    pub files: Vec<(String, Vec<u8>)>,
}

/// The platform PCI functions, which have no server.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeKind {
    HostBridge,
    AmdHostBridge,
    Lpc,
}

/// How a child confines itself.
#[derive(Encode, Decode, Debug, Clone, PartialEq, Default)]
pub struct SandboxConfig {
    /// Test hook (`-o sandbox.test_violation=ROLE:OP`, sent only to the
    /// children of ROLE): right after entering its sandbox the child
    /// attempts this forbidden operation (capvm_policy::hostile::OPS).
    pub test_violation: Option<String>,
    /// The broker's pid as the host sees it (the target of the hook's kill/ptrace).
    pub broker_pid: u32,
}

/// One piece of guest-physical memory, backed by the RAM memfd at `offset`.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq)]
pub struct MemoryRegion {
    pub guest_addr: u64,
    pub size: u64,
    pub offset: u64,
    /// A boot ROM: the guest reads it, its writes exit as MMIO and are
    /// dropped. Only the runner maps it; device servers cannot DMA to it.
    pub read_only: bool,
}

/// How exits reach one device server (its fds: [`crate::RouteFds`]).
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct DeviceRoute {
    /// For messages, e.g. "com1".
    pub name: String,
    pub pio: Vec<PioRange>,
    /// The GSIs its interrupt eventfds raise, in order (a UART's one, the i8042's keyboard and mouse lines).
    pub irq_gsis: Vec<u32>,
    /// The PCI function the server owns, if it is one.
    pub pci: Option<PciFunction>,
}

/// A PCI function's shape as the broker laid it out. The server owns the
/// config space bytes; the runner knows the shape so it can check what the
/// guest (or a lying server) makes of it before routing changes.
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct PciFunction {
    pub slot: u8,
    pub func: u8,
    pub bars: Vec<BarSpec>,
    /// Queue-notify registers: guest writes there signal an eventfd (KVM
    /// ioeventfd) instead of exiting.
    pub notify: Vec<NotifySpec>,
    pub msix: Option<MsixSpec>,
    /// A plain MSI capability (one vector), for functions without MSI-X.
    pub msi: Option<MsiSpec>,
    /// The GSI INTA# is wired to (`memmap::pci_intx_gsi`), if the function
    /// has a legacy interrupt: a level-triggered IOAPIC pin, raised
    /// through a resample irqfd.
    pub intx_gsi: Option<u32>,
    /// A BAR the runner backs with memory it maps into the guest (a
    /// framebuffer) rather than routing its accesses to the server; the
    /// memfd is among the runner's fds for this route.
    pub memory_bar: Option<u8>,
}

#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Mem32,
    Mem64,
}

/// One memory BAR: its index (a 64-bit BAR takes `index` and `index + 1`,
/// [`ROM_BAR`] is the expansion ROM), its size (a power of two) and where
/// the broker placed it.
/// The expansion-ROM BAR's index (config offset 0x30; Linux's
/// PCI_ROM_RESOURCE): read-only, decoded only while its enable bit is set.
pub const ROM_BAR: u8 = 6;

#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq)]
pub struct BarSpec {
    pub index: u8,
    pub kind: BarKind,
    pub size: u64,
    pub addr: u64,
}

/// A notify register at `offset` in BAR `bar`.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq)]
pub struct NotifySpec {
    pub bar: u8,
    pub offset: u64,
}

/// Where the MSI-X table lives, and the GSIs its vectors' irqfds raise
/// (`first_gsi + vector`).
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq)]
pub struct MsixSpec {
    pub bar: u8,
    pub table_offset: u64,
    pub pba_offset: u64,
    pub vectors: u16,
    pub first_gsi: u32,
}

/// Where a function's MSI capability sits in its config space, and the
/// GSI its one vector's irqfd raises. The runner reads the capability back
/// after a guest write to it and routes the GSI to the message it holds.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq)]
pub struct MsiSpec {
    pub cap_offset: u16,
    pub gsi: u32,
}

/// A device server's start-up.
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// For messages and the audit: "virtio-blk (0:2.0)".
    pub name: String,
    pub memory: Vec<MemoryRegion>,
    pub function: PciFunction,
    pub backend: DeviceBackend,
    pub sandbox: SandboxConfig,
}

#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub enum DeviceBackend {
    /// One fd: the image file or block device, opened as the options say.
    Blk(BlkOptions),
    /// One fd: the tap, opened with IFF_NO_PI | IFF_VNET_HDR.
    Net(NetOptions),
    /// One fd per port, in port order: an AHCI controller's drives.
    Ahci(Vec<AhciDrive>),
    /// One fd: the display state page (crate::display).
    Fbuf(FbufOptions),
}

/// A display's preferred mode (its EDID says so; the guest may pick another).
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq)]
pub struct FbufOptions {
    pub width: u32,
    pub height: u32,
    /// The option ROM's length, if it has one: its bytes come in a memfd
    /// after the state page, which the server reads and closes.
    pub rom_size: Option<u32>,
    /// Start with the preferred mode on (width x height, 32 bits), as a
    /// BIOS leaves it: the directly booted kernel was told so.
    pub preferred_mode_at_start: bool,
}

/// The i8042 server: ports 0x60 and 0x64, IRQ 1 and 12; its input comes
/// from the display's VNC server (crate::input).
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct Ps2Config {
    pub sandbox: SandboxConfig,
}

/// The VNC server of a display.
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct VncConfig {
    /// "fbuf (0:29.0)".
    pub name: String,
    /// What viewers see while the guest has set no mode: black at the
    /// display's preferred size.
    pub width: u32,
    pub height: u32,
    /// VNC Authentication with this password (its first 8 bytes count, as
    /// in every VNC server); None: no authentication.
    pub password: Option<String>,
    /// bhyve's `wait`: say when the first viewer is in (the vCPUs wait).
    pub wait: bool,
    pub sandbox: SandboxConfig,
}

/// One AHCI port's drive.
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct AhciDrive {
    /// A CD-ROM (ATAPI, always read-only) rather than a disk.
    pub cd: bool,
    /// The image, as for virtio-blk; `serial` is IDENTIFY's (20 bytes).
    pub disk: BlkOptions,
    /// IDENTIFY's model (40 bytes) and firmware revision (8 bytes).
    pub model: String,
    pub revision: String,
    /// Nominal media rotation rate: 1 for a solid-state disk, else rpm.
    pub rotation_rate: u16,
}

#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct BlkOptions {
    pub read_only: bool,
    /// Logical sector size the guest sees (512 or 4096); physical below.
    pub sector_size: u32,
    pub physical_sector_size: u32,
    /// Disk size in bytes, as the broker found it.
    pub size: u64,
    /// bhyve `nodelete`: no DISCARD.
    pub no_delete: bool,
    /// The backend can punch holes (a regular file).
    pub can_discard: bool,
    /// Up to 20 bytes for GET_ID.
    pub serial: String,
}

#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct NetOptions {
    pub mac: [u8; 6],
    pub mtu: u16,
}

/// A half-open range of I/O ports `[base, base + len)`.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq)]
pub struct PioRange {
    pub base: u16,
    pub len: u16,
}

impl PioRange {
    pub fn contains(&self, port: u16) -> bool {
        port >= self.base && (port - self.base) < self.len
    }
}

/// Register state at the first instruction. The GDT and page tables sit at
/// the fixed addresses of `capvm_kernel::boot`, so they are not sent.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq)]
pub struct BootState {
    pub mode: EntryMode,
    pub entry: u64,
    pub rsp: u64,
    pub rsi: u64,
    pub rbx: u64,
}

#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, flat segments, EBX = start info.
    Pvh32,
    /// 64-bit long mode with identity-mapped page tables, RSI = boot_params.
    Long64,
    /// The architectural reset state: real mode at 0xFFFFFFF0, where the
    /// boot ROM (a read-only memory region) has its reset vector.
    Reset,
}

#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct UartConfig {
    /// "com1".."com4".
    pub name: String,
    /// First of the UART's eight I/O ports.
    pub port_base: u16,
    pub backend: UartBackendKind,
    pub sandbox: SandboxConfig,
}

#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq)]
pub enum UartBackendKind {
    /// Two fds: input, output (the broker's stdin and stdout).
    Stdio,
    /// One fd: a tty opened read-write.
    Tty,
    /// One fd: a listening unix stream socket; one client at a time.
    Socket,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PciFds, RouteFds, StartDeviceFds, StartPs2Fds, StartRunnerFds, StartUartFds, StartVncFds};

    /// The fingerprint of every message's encoding and fd order at
    /// PROTO_VERSION. Change a message, its fds or their order and this
    /// test fails: bump PROTO_VERSION and take the new fingerprint it prints.
    const WIRE_FINGERPRINT: (u32, u64) = (17, 0x451f_0a40_b1c4_e67e);

    fn function() -> PciFunction {
        PciFunction {
            slot: 3,
            func: 1,
            bars: vec![BarSpec { index: 0, kind: BarKind::Mem64, size: 0x4000, addr: 0xc000_4000 }],
            notify: vec![NotifySpec { bar: 0, offset: 0x2000 }, NotifySpec { bar: 0, offset: 0x2004 }],
            msix: Some(MsixSpec { bar: 0, table_offset: 0x3000, pba_offset: 0x3800, vectors: 3, first_gsi: 24 }),
            msi: None,
            intx_gsi: Some(19),
            memory_bar: Some(0),
        }
    }

    fn sandbox() -> SandboxConfig {
        SandboxConfig { test_violation: Some("open".into()), broker_pid: 4242 }
    }

    /// One of every message, every field set to something of its own.
    fn samples() -> (Vec<ToChild>, Vec<ToBroker>) {
        let memory = vec![MemoryRegion { guest_addr: 0x10_0000, size: 0x200_0000, offset: 7, read_only: false }];
        let routes = vec![
            DeviceRoute {
                name: "com1".into(),
                pio: vec![PioRange { base: 0x3f8, len: 8 }],
                irq_gsis: vec![4],
                pci: None,
            },
            DeviceRoute { name: "virtio-blk (0:3.1)".into(), pio: vec![], irq_gsis: vec![], pci: Some(function()) },
        ];
        let to_child = vec![
            ToChild::StartRunner(RunnerConfig {
                vcpus: 2,
                memory: memory.clone(),
                boot: BootState { mode: EntryMode::Long64, entry: 0x100_0000, rsp: 0x8ff0, rsi: 0x7000, rbx: 9 },
                hide_unemulated_cpuid: true,
                devices: routes,
                bridges: vec![
                    (0, 0, BridgeKind::HostBridge),
                    (31, 0, BridgeKind::Lpc),
                    (1, 0, BridgeKind::AmdHostBridge),
                ],
                strict_io: true,
                wire_memory: false,
                fw_cfg: Some(FwCfgItems { items: vec![(5, vec![2, 0])], files: vec![("etc/e820".into(), vec![1])] }),
                flash: Some(FlashSpec { guest_addr: 0xffbe_0000, size: 0x2_0000 }),
                ring_deadlines: RingDeadlines { report_ms: 2000, stop_ms: 30_000 },
                hold_vcpus: true,
                sandbox: sandbox(),
            }),
            ToChild::StartUart(UartConfig {
                name: "com2".into(),
                port_base: 0x2f8,
                backend: UartBackendKind::Socket,
                sandbox: sandbox(),
            }),
            ToChild::StartDevice(DeviceConfig {
                name: "virtio-blk (0:3.1)".into(),
                memory: memory.clone(),
                function: function(),
                backend: DeviceBackend::Blk(BlkOptions {
                    read_only: true,
                    sector_size: 512,
                    physical_sector_size: 4096,
                    size: 1 << 30,
                    no_delete: false,
                    can_discard: true,
                    serial: "SER".into(),
                }),
                sandbox: sandbox(),
            }),
            ToChild::StartDevice(DeviceConfig {
                name: "virtio-net (0:4.0)".into(),
                memory,
                function: function(),
                backend: DeviceBackend::Net(NetOptions { mac: [2, 0, 0, 0, 0, 1], mtu: 9000 }),
                sandbox: SandboxConfig::default(),
            }),
            ToChild::StartDevice(DeviceConfig {
                name: "fbuf (0:29.0)".into(),
                memory: vec![],
                function: function(),
                backend: DeviceBackend::Fbuf(FbufOptions {
                    width: 1024,
                    height: 768,
                    rom_size: Some(0x7000),
                    preferred_mode_at_start: true,
                }),
                sandbox: SandboxConfig::default(),
            }),
            ToChild::StartVnc(VncConfig {
                name: "fbuf (0:29.0)".into(),
                width: 800,
                height: 600,
                password: Some("secret".into()),
                wait: true,
                sandbox: sandbox(),
            }),
            ToChild::StartPs2(Ps2Config { sandbox: sandbox() }),
            ToChild::Go,
            ToChild::Shutdown,
        ];
        let to_broker = vec![
            ToBroker::Ready { version: PROTO_VERSION },
            ToBroker::Event(VmEvent::Reboot),
            ToBroker::Event(VmEvent::PowerOff),
            ToBroker::Event(VmEvent::Halt),
            ToBroker::Event(VmEvent::TripleFault { vcpu: 1, rip: 0xfff0, cpl: 3 }),
            ToBroker::Event(VmEvent::InternalError(InternalErrorReport {
                vcpu: 1,
                suberror: 1,
                rip: 0x1234,
                cpl: 0,
                bytes: vec![0x0f, 0xae, 0x2f],
                tried: "xrstors is not completed".into(),
            })),
            ToBroker::Event(VmEvent::UnhandledIo { vcpu: 0, port: 0x80, write: true }),
            ToBroker::Fatal("why".into()),
            ToBroker::ViewerConnected,
            ToBroker::Late { device: "uart (com1)".into(), vcpu: 1, waited_ms: 2000 },
            ToBroker::Sandboxed(SandboxReport {
                role: "uart".into(),
                allowed_syscalls: 30,
                namespaces: vec!["user".into()],
                landlock: "enforced (ABI 4)".into(),
                fds: vec![FdReport { fd: 5, what: "doorbell".into(), rights: vec!["CAP_READ".into()], ioctls: vec![] }],
                enter_us: 77,
            }),
        ];
        (to_child, to_broker)
    }

    /// Every layout's fds, named, in wire order.
    fn fd_orders() -> Vec<&'static str> {
        let pci = || PciFds { notify: vec!["notify"], interrupts: vec!["msix"], intx: Some(["intx", "resample"]) };
        let mut v = StartUartFds { ring: "ring", doorbell: "doorbell", irq: "irq", backend: vec!["backend"] }.flatten();
        v.extend(
            StartDeviceFds {
                ring: "ring",
                doorbell: "doorbell",
                ram: "ram",
                stats: "stats",
                pci: pci(),
                backend: vec!["b"],
            }
            .flatten(),
        );
        let route = RouteFds {
            ring: "ring",
            doorbell: "doorbell",
            irqs: vec!["irq"],
            pci: Some(pci()),
            memory: Some("memory"),
        };
        v.extend(
            StartRunnerFds { kvm: "kvm", ram: "ram", stats: "stats", devices: vec![route], flash: Some("flash") }
                .flatten(),
        );
        v.extend(
            StartVncFds { listener: "listener", vram: "vram", state: "state", input: "input", stats: "stats" }
                .flatten(),
        );
        v.extend(
            StartPs2Fds {
                ring: "ring",
                doorbell: "doorbell",
                keyboard_irq: "kbd",
                mouse_irq: "aux",
                input: "input",
                stats: "stats",
            }
            .flatten(),
        );
        v
    }

    fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
        bytes.iter().fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
    }

    #[test]
    fn wire_format_is_pinned_to_the_protocol_version() {
        let (to_child, to_broker) = samples();
        let mut h = 0xcbf2_9ce4_8422_2325;
        for m in &to_child {
            h = fnv1a(h, &bincode::encode_to_vec(m, crate::channel::config()).unwrap());
        }
        for m in &to_broker {
            h = fnv1a(h, &bincode::encode_to_vec(m, crate::channel::config()).unwrap());
        }
        for name in fd_orders() {
            h = fnv1a(h, name.as_bytes());
        }
        assert_eq!(
            (PROTO_VERSION, h),
            WIRE_FINGERPRINT,
            "the wire format changed: bump PROTO_VERSION and set WIRE_FINGERPRINT to ({}, {h:#x})",
            PROTO_VERSION + (WIRE_FINGERPRINT.0 == PROTO_VERSION) as u32
        );
    }

    #[test]
    fn every_sample_decodes_to_itself() {
        let (to_child, to_broker) = samples();
        for m in to_child {
            let bytes = bincode::encode_to_vec(&m, crate::channel::config()).unwrap();
            let (back, _): (ToChild, _) = bincode::decode_from_slice(&bytes, crate::channel::config()).unwrap();
            assert_eq!(back, m);
        }
        for m in to_broker {
            let bytes = bincode::encode_to_vec(&m, crate::channel::config()).unwrap();
            let (back, _): (ToBroker, _) = bincode::decode_from_slice(&bytes, crate::channel::config()).unwrap();
            assert_eq!(back, m);
        }
    }
}
