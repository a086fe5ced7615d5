//! The control messages. Fds travel beside a message; each message's doc
//! comment says which fds, in which order.

use bincode::{Decode, Encode};

/// Bumped whenever a message or the ring layout changes incompatibly.
pub const PROTO_VERSION: u32 = 2;

/// Broker to child.
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub enum ToChild {
    /// Start the vCPU runner. Fds: `/dev/kvm`, guest RAM, its stats page,
    /// then for each entry of `devices` the fds [`DeviceRoute`] lists.
    StartRunner(RunnerConfig),
    /// Start a UART server. Fds: exit ring, doorbell eventfd, interrupt
    /// eventfd, then the backend's fds (see [`UartBackendKind`]).
    StartUart(UartConfig),
    /// Start a virtio device server. Fds: exit ring, doorbell eventfd,
    /// guest RAM, then one notify eventfd per entry of `function.notify`,
    /// one interrupt eventfd per MSI-X vector, then the backend's fds (see
    /// [`VirtioBackend`]).
    StartVirtio(VirtioConfig),
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
    Sandboxed(SandboxReport),
    /// The child made a syscall its manifest does not allow (sent from its
    /// SIGSYS handler, so plain integers only).
    Violation(ViolationRecord),
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

/// One forbidden syscall, as the SIGSYS handler saw it.
#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq)]
pub struct ViolationRecord {
    pub nr: u64,
    pub args: [u64; 6],
    /// Where the syscall was made.
    pub ip: u64,
    /// The process exits after reporting (sandbox.violations=kill); else
    /// the syscall returned EPERM and it goes on.
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
    pub sandbox: SandboxConfig,
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
    /// Log mode: forbidden syscalls fail with EPERM instead of ending the child.
    pub log_only: bool,
    /// Test hook (`-o sandbox.test_violation=ROLE:OP`): right after entering
    /// its sandbox the child attempts this forbidden operation.
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
}

/// How exits reach one device server. Fds, in the StartRunner message:
/// exit ring, doorbell, the interrupt eventfd if `irq_gsi`, then for a PCI
/// function one eventfd per `notify` entry and one per MSI-X vector.
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct DeviceRoute {
    /// For messages, e.g. "com1".
    pub name: String,
    pub pio: Vec<PioRange>,
    /// The GSI the server's interrupt eventfd raises, if any.
    pub irq_gsi: Option<u32>,
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
    /// The GSI INTA# is wired to (`memmap::pci_intx_gsi`), if the function
    /// has a legacy interrupt: a level-triggered IOAPIC pin, raised
    /// through a resample irqfd.
    pub intx_gsi: Option<u32>,
}

#[derive(Encode, Decode, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Mem32,
    Mem64,
}

/// One memory BAR: its index (a 64-bit BAR takes `index` and `index + 1`),
/// its size (a power of two) and where the broker placed it.
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

/// A virtio device server's start-up.
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct VirtioConfig {
    /// For messages and the audit: "virtio-blk (0:2.0)".
    pub name: String,
    pub memory: Vec<MemoryRegion>,
    pub function: PciFunction,
    pub backend: VirtioBackend,
    pub sandbox: SandboxConfig,
}

#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub enum VirtioBackend {
    /// One fd: the image file or block device, opened as the options say.
    Blk(BlkOptions),
    /// One fd: the tap, opened with IFF_NO_PI | IFF_VNET_HDR.
    Net(NetOptions),
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
