//! The control messages. Fds travel beside a message; each message's doc
//! comment says which fds, in which order.

use bincode::{Decode, Encode};

/// Bumped whenever a message or the ring layout changes incompatibly.
pub const PROTO_VERSION: u32 = 1;

/// Broker to child.
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub enum ToChild {
    /// Start the vCPU runner. Fds: `/dev/kvm`, guest RAM, then for each
    /// entry of `devices`: its exit ring, its doorbell eventfd and, if it has
    /// an `irq_gsi`, its interrupt eventfd.
    StartRunner(RunnerConfig),
    /// Start a UART server. Fds: exit ring, doorbell eventfd, interrupt
    /// eventfd, then the backend's fds (see [`UartBackendKind`]).
    StartUart(UartConfig),
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
    /// bhyve `-e`: an access to an unemulated port stops the VM.
    pub strict_io: bool,
    /// bhyve `-S`: wire guest memory.
    pub wire_memory: bool,
    pub sandbox: SandboxConfig,
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

/// How exits reach one device server.
#[derive(Encode, Decode, Debug, Clone, PartialEq)]
pub struct DeviceRoute {
    /// For messages, e.g. "com1".
    pub name: String,
    pub pio: Vec<PioRange>,
    /// The GSI the server's interrupt eventfd raises, if any.
    pub irq_gsi: Option<u32>,
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
