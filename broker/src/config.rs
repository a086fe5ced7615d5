//! The VM's configuration, kept as bhyve keeps it: a flat tree of
//! `dotted.name=value` variables that the command line (`-c`, `-m`, `-s`,
//! `-l`, flags), `-k` files and `-o` all write into, in order. [`VmConfig`]
//! is the checked, typed view the rest of the broker uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::devices::{self, Conf, Emulation, Kind, Served, ServedDevice, SlotOptions};

/// A configuration error: one line saying what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// bhyve's configuration variables.
#[derive(Debug, Default, Clone)]
pub struct ConfigTree {
    vars: BTreeMap<String, String>,
}

/// Variables that are not under `pci.` or `lpc.`, with what they do here.
const KNOWN_VARS: &[&str] = &[
    "name",
    "cpus",
    "sockets",
    "cores",
    "threads",
    "memory.size",
    "memory.wired",
    "x86.strictio",
    "x86.strictmsr",
    "x86.vmexit_on_hlt",
    "x86.vmexit_on_pause",
    "acpi_tables",
    "rtc.use_localtime",
    "destroy_on_poweroff",
    "boot.kernel",
    "boot.initrd",
    "boot.cmdline",
    "sandbox.violations",
    "sandbox.audit_log",
    "sandbox.test_violation",
    "exit_ring.report",
    "exit_ring.deadline",
];

/// How long a vCPU waits for a device server before the server is named
/// (stderr, audit log, stats) and before the VM stops with status 4.
const DEFAULT_RING_REPORT: &str = "2";
const DEFAULT_RING_DEADLINE: &str = "30";

impl ConfigTree {
    pub fn set(&mut self, key: &str, value: &str) {
        self.vars.insert(key.to_string(), value.to_string());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// `-o key=value`.
    pub fn set_assignment(&mut self, arg: &str) -> Result<(), ConfigError> {
        match arg.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                self.set(k.trim(), v.trim());
                Ok(())
            }
            _ => err(format!("-o '{arg}': expected key=value")),
        }
    }

    /// `-k file`: bhyve's format, one `key=value` a line, `#` comments.
    pub fn read_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        self.parse_lines(&text, &path.display().to_string())
    }

    fn parse_lines(&mut self, text: &str, origin: &str) -> Result<(), ConfigError> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => self.set(k.trim(), v.trim()),
                _ => return err(format!("{origin}:{}: expected key=value, found '{line}'", n + 1)),
            }
        }
        Ok(())
    }

    /// What follows `prefix` in every variable that starts with it.
    pub(crate) fn keys_under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.vars.range(prefix.to_string()..).map_while(move |(k, _)| k.strip_prefix(prefix))
    }

    /// A duration in seconds (fractions allowed), as milliseconds.
    pub(crate) fn seconds_as_ms(&self, key: &str, default: &str) -> Result<u64, ConfigError> {
        let v = self.get(key).unwrap_or(default);
        match v.parse::<f64>() {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "0 to 86 400 000")]
            Ok(s) if (0.0..=86_400.0).contains(&s) => Ok((s * 1000.0).round() as u64),
            _ => err(format!("{key}={v}: give seconds, 0 to 86400 (0 waits forever)")),
        }
    }

    pub(crate) fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some("true" | "yes" | "on" | "1") => Ok(true),
            Some("false" | "no" | "off" | "0") => Ok(false),
            Some(v) => err(format!("{key}={v}: expected true or false")),
        }
    }
}

/// Parses bhyve's memory size: a number with an optional K/M/G/T suffix
/// (either case); no suffix means megabytes.
pub fn parse_memsize(s: &str) -> Result<u64, ConfigError> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                _ => return err(format!("memory size '{s}': unknown suffix '{c}' (use K, M, G or T)")),
            };
            (&s[..i], shift)
        }
        _ => (s, 20),
    };
    let n: u64 = digits.parse().map_err(|_| ConfigError(format!("memory size '{s}' is not a number with K/M/G/T")))?;
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| ConfigError(format!("memory size '{s}' is out of range")))
}

/// The COM ports an lpc device offers: name, first I/O port, IRQ.
pub const COM_PORTS: [(&str, u16, u32); 4] =
    [("com1", 0x3f8, 4), ("com2", 0x2f8, 3), ("com3", 0x3e8, 4), ("com4", 0x2e8, 3)];

/// Where a COM port's bytes go.
#[derive(Debug, Clone, PartialEq)]
pub enum ComBackend {
    Stdio,
    Tty(PathBuf),
    /// A unix socket capvm creates and listens on.
    Socket(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ComPort {
    pub name: &'static str,
    pub port_base: u16,
    pub irq: u32,
    pub backend: ComBackend,
}

/// A `-s` slot and its registry row.
#[derive(Debug)]
pub struct PciSlot {
    pub slot: u8,
    pub func: u8,
    pub emulation: &'static Emulation,
}

/// A function served by its own process: its slot, its registry row's
/// name and server part, its options.
#[derive(Debug)]
pub struct ServedConfig {
    pub slot: u8,
    pub func: u8,
    /// "virtio-blk".
    pub emulation: &'static str,
    pub served: &'static Served,
    pub device: Box<dyn ServedDevice>,
}

impl ServedConfig {
    /// `virtio-blk (0:3.0)`: how messages, the audit and manifests name its server.
    pub fn name(&self) -> String {
        devices::server_name(self.emulation, self.slot, self.func)
    }

    /// `-s 3:0,virtio-blk`: how errors name the slot.
    pub fn at(&self) -> String {
        devices::slot_name(self.emulation, self.slot, self.func)
    }
}

/// A file firmware finds in fw_cfg (bhyve's `-f`).
#[derive(Debug, Clone, PartialEq)]
pub struct FwCfgFile {
    pub name: String,
    pub data: FwCfgData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FwCfgData {
    String(String),
    File(PathBuf),
}

/// What the vCPUs run first.
#[derive(Debug, Clone, PartialEq)]
pub enum Boot {
    /// A kernel loaded by capvm (`-o boot.kernel`).
    Kernel(BootConfig),
    /// Firmware from its reset vector (`-l bootrom,ROMFILE[,VARFILE]`),
    /// its variable store, and the user's fw_cfg files (`-f`).
    Firmware { rom: PathBuf, vars: Option<PathBuf>, files: Vec<FwCfgFile> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct BootConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// How children are confined and audited.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSettings {
    /// `sandbox.violations=log`: forbidden syscalls fail with EPERM and are
    /// recorded, the VM goes on (default `kill`: the VM stops).
    pub log_only: bool,
    /// JSON-lines audit log; created on the first record.
    pub audit_log: PathBuf,
    /// Test hook: `ROLE:OP` (see capvm_policy::hostile).
    pub test_violation: Option<TestViolation>,
}

/// Where audit logs go by default: root's in /var/log/capvm; a user's in
/// `$XDG_STATE_HOME/capvm` (`~/.local/state/capvm`), which the user owns
/// and which outlives the VM, unlike its runtime directory.
pub fn default_audit_dir() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/log/capvm");
    }
    // Empty is unset (the XDG base directory spec), and so is relative.
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let state = std::env::var_os("XDG_STATE_HOME")
        .and_then(absolute)
        .or_else(|| std::env::var_os("HOME").and_then(absolute).map(|h| h.join(".local/state")));
    state.map_or_else(crate::control::runtime_dir, |s| s.join("capvm"))
}

/// `-o sandbox.test_violation=ROLE:OP`: the children of ROLE attempt OP.
#[derive(Debug, Clone, PartialEq)]
pub struct TestViolation {
    pub role: &'static str,
    pub op: String,
}

/// The checked configuration of one VM.
#[derive(Debug)]
pub struct VmConfig {
    pub name: String,
    pub cpus: u32,
    pub memory: u64,
    pub wired: bool,
    pub strict_io: bool,
    pub slots: Vec<PciSlot>,
    /// The functions with servers of their own, in slot order (their start order).
    pub served: Vec<ServedConfig>,
    pub coms: Vec<ComPort>,
    pub boot: Boot,
    pub sandbox: SandboxSettings,
    pub ring_deadlines: capvm_ipc::RingDeadlines,
}

/// Most vCPUs: what one exit ring page serves.
pub const MAX_CPUS: u32 = capvm_ipc::ring::MAX_SLOTS;
/// Least memory a guest gets: the boot structures live in the first MiB.
const MIN_MEMORY: u64 = 2 << 20;
/// Default as bhyve: 256 MiB.
const DEFAULT_MEMORY: &str = "256M";

impl VmConfig {
    /// A display (fbuf) is configured: then there is an i8042 too, fed by
    /// its viewers.
    pub fn has_display(&self) -> bool {
        self.served.iter().any(|d| d.device.as_any().is::<devices::fbuf::FbufConfig>())
    }

    pub fn from_tree(tree: &ConfigTree) -> Result<VmConfig, ConfigError> {
        for key in tree.vars.keys() {
            let known = KNOWN_VARS.contains(&key.as_str())
                || key.starts_with("pci.")
                || key.starts_with("lpc.")
                || key.starts_with("fw_cfg.user.");
            if !known {
                return err(format!("unknown configuration variable '{key}'"));
            }
        }
        let name = tree.get("name").ok_or_else(|| ConfigError("no VM name: give it as the last argument".into()))?;
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || name.starts_with('.')
        {
            return err(format!("VM name '{name}': use 1-64 letters, digits, '-', '_' or '.'"));
        }
        let cpus_s = tree.get("cpus").unwrap_or("1");
        let cpus: u32 = cpus_s.parse().map_err(|_| ConfigError(format!("cpus={cpus_s}: not a number")))?;
        if cpus == 0 || cpus > MAX_CPUS {
            return err(format!("cpus={cpus}: capvm runs 1 to {MAX_CPUS} vCPUs"));
        }
        let topology: u32 = ["sockets", "cores", "threads"]
            .iter()
            .map(|k| {
                tree.get(k)
                    .map_or(Ok(1), |v| v.parse::<u32>().map_err(|_| ConfigError(format!("{k}={v}: not a number"))))
            })
            .product::<Result<u32, _>>()?;
        if ["sockets", "cores", "threads"].iter().any(|k| tree.get(k).is_some()) && topology != cpus {
            return err(format!("sockets x cores x threads = {topology}, but cpus={cpus}: make them agree"));
        }
        let memory = parse_memsize(tree.get("memory.size").unwrap_or(DEFAULT_MEMORY))?;
        if memory < MIN_MEMORY {
            return err(format!("memory.size: {memory} bytes is too small; give at least 2M"));
        }
        if memory % 4096 != 0 {
            return err("memory.size must be a multiple of 4K");
        }

        let slots = pci_slots(tree)?;
        let mut served = Vec::new();
        for s in &slots {
            if let Kind::Served(row) = &s.emulation.kind {
                let options = SlotOptions {
                    tree,
                    slot: s.slot,
                    func: s.func,
                    emulation: s.emulation.name,
                    vm_name: name,
                    port: None,
                };
                let device = (row.parse)(&options)?;
                served.push(ServedConfig {
                    slot: s.slot,
                    func: s.func,
                    emulation: s.emulation.name,
                    served: row,
                    device,
                });
            }
        }
        let has_lpc = slots.iter().any(|s| devices::is_lpc(s.emulation));
        let displays = served.iter().filter(|d| d.device.as_any().is::<devices::fbuf::FbufConfig>()).count();
        if displays > 1 {
            return err("one fbuf per VM: a VM has one screen, keyboard and mouse");
        }
        if displays == 1 && !has_lpc {
            return err("-s fbuf needs an LPC bridge for its keyboard and mouse (the i8042): add -s 31,lpc");
        }
        let mut coms = Vec::new();
        for (com, base, irq) in COM_PORTS {
            let Some(path) = tree.get(&format!("lpc.{com}.path")) else { continue };
            if !has_lpc {
                return err(format!("-l {com} needs an LPC bridge: add -s 31,lpc"));
            }
            let backend = match path {
                "stdio" => ComBackend::Stdio,
                "" => return err(format!("-l {com}: give stdio, a tty path or a socket path")),
                p => {
                    let p = PathBuf::from(p);
                    match std::fs::metadata(&p) {
                        Ok(m) if std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()) => ComBackend::Tty(p),
                        Ok(_) => {
                            return err(format!(
                                "-l {com}: {} exists and is not a tty; remove it to use it as a socket path",
                                p.display()
                            ))
                        }
                        Err(_) => ComBackend::Socket(p),
                    }
                }
            };
            coms.push(ComPort { name: com, port_base: base, irq, backend });
        }
        if let Some(k) = tree.vars.keys().find(|k| {
            k.starts_with("lpc.")
                && !matches!(k.as_str(), "lpc.bootrom" | "lpc.bootvars")
                && !COM_PORTS.iter().any(|(c, _, _)| k.as_str() == format!("lpc.{c}.path"))
        }) {
            return err(format!("unknown LPC device variable '{k}' (see -l help)"));
        }
        if coms.iter().filter(|c| c.backend == ComBackend::Stdio).count() > 1 {
            return err("only one COM port can use stdio");
        }

        let kernel = tree.get("boot.kernel").filter(|k| !k.is_empty());
        let boot = match (kernel, tree.get("lpc.bootrom")) {
            (Some(_), Some(_)) => {
                return err("-o boot.kernel and -l bootrom both say what to boot: give one of them");
            }
            (None, Some(rom)) => {
                if !has_lpc {
                    return err("-l bootrom needs an LPC bridge: add -s 31,lpc");
                }
                if ["boot.initrd", "boot.cmdline"].iter().any(|k| tree.get(k).is_some()) {
                    return err("boot.initrd and boot.cmdline go with boot.kernel; firmware finds its own");
                }
                let mut files = Vec::new();
                for n in 0.. {
                    let Some(name) = tree.get(&format!("fw_cfg.user.{n}.name")) else { break };
                    let data = match (
                        tree.get(&format!("fw_cfg.user.{n}.string")),
                        tree.get(&format!("fw_cfg.user.{n}.file")),
                    ) {
                        (Some(s), None) => FwCfgData::String(s.to_string()),
                        (None, Some(f)) => FwCfgData::File(PathBuf::from(f)),
                        _ => return err(format!("-f {name}: give string=VALUE or file=PATH, once")),
                    };
                    files.push(FwCfgFile { name: name.to_string(), data });
                }
                Boot::Firmware { rom: PathBuf::from(rom), vars: tree.get("lpc.bootvars").map(PathBuf::from), files }
            }
            (Some(_), None) | (None, None) if tree.get("fw_cfg.user.0.name").is_some() => {
                return err("-f adds a file for firmware: it needs -l bootrom");
            }
            (Some(kernel), None) => Boot::Kernel(BootConfig {
                kernel: PathBuf::from(kernel),
                initrd: tree.get("boot.initrd").filter(|s| !s.is_empty()).map(PathBuf::from),
                cmdline: tree.get("boot.cmdline").unwrap_or("").to_string(),
            }),
            (None, None) => {
                return err(
                    "nothing to boot: give -o boot.kernel=PATH (a bzImage or an ELF kernel) or -l bootrom,FIRMWARE",
                )
            }
        };

        let log_only = match tree.get("sandbox.violations").unwrap_or("kill") {
            "kill" => false,
            "log" => true,
            other => return err(format!("sandbox.violations={other}: use kill or log")),
        };
        let test_violation = match tree.get("sandbox.test_violation") {
            None => None,
            Some(t) => {
                let mut roles = devices::hostile_roles();
                roles.push("broker");
                let parsed = t.split_once(':').and_then(|(role, op)| {
                    let role = *roles.iter().find(|r| **r == role)?;
                    // The broker has no channel to lie on or audit to evade.
                    let child_only = role != "broker"
                        && (capvm_policy::hostile::LIES.contains(&op) || capvm_policy::hostile::EVASIONS.contains(&op));
                    let known =
                        capvm_policy::hostile::OPS.contains(&op) || op == capvm_policy::hostile::IOCTL_OP || child_only;
                    known.then(|| TestViolation { role, op: op.to_string() })
                });
                let Some(parsed) = parsed else {
                    return err(format!(
                        "sandbox.test_violation={t}: use ROLE:OP with ROLE one of {} and OP one of {}, ioctl, {}",
                        roles.join(", "),
                        capvm_policy::hostile::OPS.join(", "),
                        [capvm_policy::hostile::LIES.join(", "), capvm_policy::hostile::EVASIONS.join(", ")].join(", ")
                    ));
                };
                Some(parsed)
            }
        };
        let sandbox = SandboxSettings {
            log_only,
            audit_log: tree
                .get("sandbox.audit_log")
                .map(PathBuf::from)
                .unwrap_or_else(|| default_audit_dir().join(format!("{name}.audit.jsonl"))),
            test_violation,
        };

        Ok(VmConfig {
            sandbox,
            name: name.to_string(),
            cpus,
            memory,
            wired: tree.bool("memory.wired", false)?,
            strict_io: tree.bool("x86.strictio", false)?,
            ring_deadlines: capvm_ipc::RingDeadlines {
                report_ms: tree.seconds_as_ms("exit_ring.report", DEFAULT_RING_REPORT)?,
                stop_ms: tree.seconds_as_ms("exit_ring.deadline", DEFAULT_RING_DEADLINE)?,
            },
            slots,
            served,
            coms,
            boot,
        })
    }
}

/// `pci.<bus>.<slot>.<func>.device` variables, checked.
fn pci_slots(tree: &ConfigTree) -> Result<Vec<PciSlot>, ConfigError> {
    let mut slots = Vec::new();
    for (key, value) in &tree.vars {
        let Some(rest) = key.strip_prefix("pci.") else { continue };
        let parts: Vec<&str> = rest.split('.').collect();
        let [bus, slot, func, "device"] = parts[..] else {
            let emulation = parts.get(..3).and_then(|p| tree.get(&format!("pci.{}.device", p.join("."))));
            match (emulation.and_then(devices::lookup), parts.get(3)) {
                (Some(e), Some(opt)) if parts.len() == 4 && e.options.contains(opt) => continue,
                (Some(e), Some(&"port")) if matches!(e.conf, Conf::Ports { .. }) => {
                    let Conf::Ports { port_options, .. } = e.conf else { continue };
                    match parts[4..] {
                        [n, opt] if n.parse::<u8>().is_ok_and(|n| n < 32) && port_options.contains(&opt) => continue,
                        [n, _] if n.parse::<u8>().is_ok_and(|n| n < 32) => {
                            return err(format!("{key}: an {} port has no option '{}' (see -s help)", e.name, parts[5]))
                        }
                        _ => return err(format!("{key}: ports are pci.B.S.F.port.N.<option>, N from 0 to 31")),
                    }
                }
                (Some(e), Some(opt)) => return err(format!("{key}: {} has no option '{opt}' (see -s help)", e.name)),
                _ => return err(format!("unknown PCI variable '{key}'")),
            }
        };
        let num = |s: &str, max: u8, what: &str| -> Result<u8, ConfigError> {
            s.parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| ConfigError(format!("{key}: {what} must be 0-{max}")))
        };
        if num(bus, 255, "bus")? != 0 {
            return err(format!("{key}: only PCI bus 0 exists"));
        }
        let (slot, func) = (num(slot, 31, "slot")?, num(func, 7, "function")?);
        let Some(emulation) = devices::lookup(value) else {
            return err(format!("-s {slot}:{func},{value}: unknown or not yet supported emulation (see -s help)"));
        };
        slots.push(PciSlot { slot, func, emulation });
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::devices::virtio_blk::DiskConfig;
    use crate::devices::virtio_net::{default_mac, NicConfig};

    /// The options of the `i`th served device, as type `T`.
    fn served<T: 'static>(c: &VmConfig, i: usize) -> &T {
        c.served[i].device.as_any().downcast_ref::<T>().expect("the device type the test configured")
    }

    fn tree(vars: &[(&str, &str)]) -> ConfigTree {
        let mut t = ConfigTree::default();
        for (k, v) in vars {
            t.set(k, v);
        }
        t
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![("name", "vm0"), ("boot.kernel", "/k")]
    }

    #[test]
    fn memsize_accepts_bhyve_suffixes_and_defaults_to_megabytes() {
        assert_eq!(parse_memsize("64M").unwrap(), 64 << 20);
        assert_eq!(parse_memsize("64m").unwrap(), 64 << 20);
        assert_eq!(parse_memsize("512").unwrap(), 512 << 20);
        assert_eq!(parse_memsize("2G").unwrap(), 2 << 30);
        assert_eq!(parse_memsize("4096k").unwrap(), 4 << 20);
        assert_eq!(parse_memsize("1T").unwrap(), 1 << 40);
    }

    #[test]
    fn exit_ring_deadlines_default_take_seconds_and_refuse_garbage() {
        let c = VmConfig::from_tree(&tree(&base())).unwrap();
        assert_eq!(c.ring_deadlines, capvm_ipc::RingDeadlines { report_ms: 2000, stop_ms: 30_000 });
        let mut vars = base();
        vars.extend([("exit_ring.report", "0.25"), ("exit_ring.deadline", "0")]);
        let c = VmConfig::from_tree(&tree(&vars)).unwrap();
        assert_eq!(c.ring_deadlines, capvm_ipc::RingDeadlines { report_ms: 250, stop_ms: 0 });
        for bad in ["-1", "soon", "1e9", "NaN", ""] {
            let mut vars = base();
            vars.push(("exit_ring.deadline", bad));
            let e = VmConfig::from_tree(&tree(&vars)).unwrap_err().to_string();
            assert!(e.contains("exit_ring.deadline") && e.contains("seconds"), "{bad}: {e}");
        }
    }

    #[test]
    fn memsize_rejects_garbage_with_a_message() {
        for bad in ["", "M", "12Q", "-1M", "99999999999999999999G", "0"] {
            assert!(parse_memsize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_file_lines_and_comments_parse() {
        let mut t = ConfigTree::default();
        t.parse_lines("# a comment\n\nname = vm1\ncpus=2\nmemory.size=128M\n", "f").unwrap();
        assert_eq!(t.get("name"), Some("vm1"));
        assert_eq!(t.get("cpus"), Some("2"));
        assert!(t.parse_lines("novalue\n", "f").unwrap_err().0.contains("f:1"));
    }

    #[test]
    fn vmconfig_defaults_match_bhyve() {
        let c = VmConfig::from_tree(&tree(&base())).unwrap();
        assert_eq!((c.cpus, c.memory, c.wired, c.strict_io), (1, 256 << 20, false, false));
    }

    #[test]
    fn vmconfig_rejects_unknown_variables_and_emulations() {
        let mut v = base();
        v.push(("frobnicate", "1"));
        assert!(VmConfig::from_tree(&tree(&v)).unwrap_err().0.contains("frobnicate"));
        let mut v = base();
        v.push(("pci.0.3.0.device", "sound-blaster"));
        assert!(VmConfig::from_tree(&tree(&v)).unwrap_err().0.contains("-s help"));
    }

    #[test]
    fn vmconfig_com_port_needs_lpc() {
        let mut v = base();
        v.push(("lpc.com1.path", "stdio"));
        assert!(VmConfig::from_tree(&tree(&v)).unwrap_err().0.contains("-s 31,lpc"));
        v.push(("pci.0.31.0.device", "lpc"));
        let c = VmConfig::from_tree(&tree(&v)).unwrap();
        assert_eq!(c.coms[0].port_base, 0x3f8);
        assert_eq!(c.coms[0].backend, ComBackend::Stdio);
    }

    #[test]
    fn vmconfig_checks_cpus_topology_and_name() {
        for (k, val) in [("cpus", "0"), ("cpus", "999"), ("cpus", "x"), ("name", "../etc"), ("memory.size", "1M")] {
            let mut v = base();
            v.retain(|(kk, _)| *kk != k);
            v.push((k, val));
            assert!(VmConfig::from_tree(&tree(&v)).is_err(), "{k}={val}");
        }
        let mut v = base();
        v.extend([("cpus", "4"), ("sockets", "2"), ("cores", "2")]);
        assert_eq!(VmConfig::from_tree(&tree(&v)).unwrap().cpus, 4);
        v.push(("threads", "2"));
        assert!(VmConfig::from_tree(&tree(&v)).is_err());
    }

    #[test]
    fn virtio_net_options_parse_and_the_default_mac_is_stable() {
        let mut v = base();
        v.extend([("pci.0.3.0.device", "virtio-net"), ("pci.0.3.0.backend", "tap7")]);
        let c = VmConfig::from_tree(&tree(&v)).unwrap();
        let n = served::<NicConfig>(&c, 0);
        assert_eq!((n.tap.as_str(), n.mtu), ("tap7", 1500));
        assert_eq!(&n.mac[..2], &[0x02, 0xc7]);
        assert_eq!(n.mac, default_mac("vm0", 3, 0));
        assert_ne!(n.mac, default_mac("vm1", 3, 0));
        assert_ne!(n.mac, default_mac("vm0", 4, 0));
        v.extend([("pci.0.3.0.mac", "52:54:00:ab:cd:ef"), ("pci.0.3.0.mtu", "9000")]);
        let c = VmConfig::from_tree(&tree(&v)).unwrap();
        let n = served::<NicConfig>(&c, 0);
        assert_eq!((n.mac, n.mtu), ([0x52, 0x54, 0, 0xab, 0xcd, 0xef], 9000));
        for (k, bad) in [
            ("mac", "01:00:5e:00:00:01"),
            ("mac", "52:54:00:ab:cd"),
            ("mac", "zz:54:00:ab:cd:ef"),
            ("mtu", "20"),
            ("mtu", "70000"),
            ("backend", "a/b"),
            ("backend", "a-very-long-tap-name"),
        ] {
            let mut t = tree(&base());
            t.set("pci.0.3.0.device", "virtio-net");
            t.set("pci.0.3.0.backend", "tap7");
            t.set(&format!("pci.0.3.0.{k}"), bad);
            let e = VmConfig::from_tree(&t).unwrap_err().to_string();
            assert!(e.contains("virtio-net") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn virtio_blk_options_parse_as_bhyve_and_reject_unknown_ones() {
        let mut v = base();
        v.extend([("pci.0.2.0.device", "virtio-blk"), ("pci.0.2.0.path", "/d.img"), ("pci.0.2.0.ro", "true")]);
        v.push(("pci.0.2.0.sectorsize", "512/4096"));
        let c = VmConfig::from_tree(&tree(&v)).unwrap();
        let d = served::<DiskConfig>(&c, 0);
        assert_eq!((c.served[0].slot, d.read_only, d.sector_size, d.physical_sector_size), (2, true, 512, 4096));
        assert_eq!(d.serial, "CAPVM-2-0");
        let mut bad = v.clone();
        bad.push(("pci.0.2.0.frob", "1"));
        assert!(VmConfig::from_tree(&tree(&bad)).unwrap_err().0.contains("no option 'frob'"));
        let mut bad = v.clone();
        bad.retain(|(k, _)| *k != "pci.0.2.0.sectorsize");
        bad.push(("pci.0.2.0.sectorsize", "1000"));
        assert!(VmConfig::from_tree(&tree(&bad)).unwrap_err().0.contains("sectorsize"));
        let mut nopath = base();
        nopath.push(("pci.0.2.0.device", "virtio-blk"));
        assert!(VmConfig::from_tree(&tree(&nopath)).unwrap_err().0.contains("PATH"));
    }

    #[test]
    fn ahci_ports_parse_in_the_config_form_with_their_own_options() {
        use crate::devices::ahci::AhciConfig;
        let mut v = base();
        v.extend([
            ("pci.0.4.0.device", "ahci"),
            ("pci.0.4.0.port.0.type", "hd"),
            ("pci.0.4.0.port.0.path", "/d.img"),
            ("pci.0.4.0.port.0.ser", "DISK0"),
            ("pci.0.4.0.port.0.nmrr", "1"),
            ("pci.0.4.0.port.1.type", "cd"),
            ("pci.0.4.0.port.1.path", "/i.iso"),
            ("pci.0.4.0.port.1.bootindex", "1"),
        ]);
        let c = VmConfig::from_tree(&tree(&v)).unwrap();
        let a = served::<AhciConfig>(&c, 0);
        assert_eq!(a.ports.len(), 2);
        let (hd, cd) = (&a.ports[0], &a.ports[1]);
        assert_eq!((hd.cd, hd.disk.read_only, hd.disk.serial.as_str(), hd.rotation_rate), (false, false, "DISK0", 1));
        assert_eq!((cd.cd, cd.disk.read_only, cd.disk.sector_size, cd.disk.boot_index), (true, true, 2048, Some(1)));
        assert!(cd.disk.serial.starts_with("CAPVM-") && cd.disk.serial.len() <= 20, "{}", cd.disk.serial);
        assert_eq!(cd.model, "CAPVM SATA DVD ROM");
        for (k, val, want) in [
            ("pci.0.4.0.port.0.frob", "1", "no option 'frob'"),
            ("pci.0.4.0.port.32.type", "hd", "N from 0 to 31"),
            ("pci.0.4.0.port.3.type", "hd", "without gaps"),
            ("pci.0.4.0.port.0.model", "x\u{7f}", "printable ASCII"),
            ("pci.0.4.0.port.0.ser", "ABCDEFGHIJKLMNOPQRSTU", "up to 20"),
        ] {
            let mut t = tree(&v);
            t.set(k, val);
            let e = VmConfig::from_tree(&t).unwrap_err().0;
            assert!(e.contains(want), "{k}={val}: {e}");
        }
    }

    #[test]
    fn fbuf_rom_off_has_no_rom_and_a_path_is_taken_as_given() {
        use crate::devices::fbuf::FbufConfig;
        let rom = |value: &str| {
            let mut v = base();
            v.extend([("pci.0.29.0.device", "fbuf"), ("pci.0.29.0.rom", value), ("pci.0.31.0.device", "lpc")]);
            served::<FbufConfig>(&VmConfig::from_tree(&tree(&v)).unwrap(), 0).rom.clone()
        };
        assert_eq!(rom("off"), None);
        assert_eq!(rom("/nonexistent/rom.bin"), Some(PathBuf::from("/nonexistent/rom.bin")));
    }

    #[test]
    fn vmconfig_without_kernel_says_how_to_give_one() {
        let e = VmConfig::from_tree(&tree(&[("name", "vm0")])).unwrap_err();
        assert!(e.0.contains("boot.kernel"));
    }
}
