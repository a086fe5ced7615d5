//! bhyve's command line, parsed into the configuration tree.

use std::path::PathBuf;

use crate::config::{parse_memsize, ConfigError, ConfigTree, COM_PORTS};
use crate::devices::{self, Conf, EMULATIONS};

pub const USAGE: &str = "\
usage: capvm [--print-policy] [-ADeHhPSuw] [-c [[cpus=]numcpus][,sockets=n][,cores=n][,threads=n]]
             [-f name,string=VALUE|file=PATH] [-k config_file] [-l help|lpc_device,conf]
             [-m memsize[K|k|M|m|G|g|T|t]]
             [-o var=value] [-s help|[bus:]slot[:func],emulation[,conf]] vmname

  -A  create ACPI tables (accepted; tables arrive with the PCI platform)
  -D  destroy the VM on guest poweroff (always so in capvm)
  -e  exit on an access to an unemulated I/O port (status 4)
  -H  vmexit on HLT (accepted; KVM's irqchip handles HLT in the kernel)
  -P  vmexit on PAUSE (accepted; KVM's pause-loop exiting decides)
  -S  wire guest memory
  -u  RTC keeps UTC (accepted; the RTC arrives with the PCI platform)
  -w  ignore unimplemented MSRs (accepted; KVM answers MSRs in the kernel)
  -h  this help

capvm boots a kernel directly (the role of bhyveload):
  -o boot.kernel=PATH    a Linux bzImage or an ELF64 kernel (PVH note honoured)
  -o boot.initrd=PATH    an initial ramdisk
  -o boot.cmdline=STRING the kernel command line
or firmware (bhyve's bootrom):
  -l bootrom,ROMFILE[,VARFILE]  e.g. /usr/share/seabios/bios-256k.bin, from its reset vector;
                         VARFILE: a flash below the ROM where UEFI firmware keeps its variables
  -f name,string=VALUE|file=PATH   a file the firmware finds in fw_cfg (name it opt/...)

sandbox (every child process, and the broker once they run; see capvmctl --audit):
  --print-policy               print each process's manifest for this command line, start nothing
  -o sandbox.violations=kill|log  a forbidden syscall stops the VM (kill, default) or fails
                               with EPERM and is recorded (log)
  -o sandbox.audit_log=PATH    JSON-lines audit log (default /var/log/capvm/NAME.audit.jsonl;
                               a user's: ~/.local/state/capvm/)

exit status: 0 reboot, 1 poweroff, 2 halt, 3 triple fault, 4 error";

/// What the command line asks for.
#[derive(Debug)]
pub enum Action {
    Run(ConfigTree),
    /// `--print-policy`: the children's manifests for this configuration.
    PrintPolicy(ConfigTree),
    Usage,
    ListSlots,
    ListLpc,
}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

pub fn parse(args: &[String]) -> Result<Action, ConfigError> {
    let mut tree = ConfigTree::default();
    let mut i = 0;
    let mut positional = Vec::new();
    let mut print_policy = false;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            positional.extend(args[i..].iter().cloned());
            break;
        }
        if arg == "--help" {
            return Ok(Action::Usage);
        }
        if arg == "--print-policy" {
            print_policy = true;
            continue;
        }
        let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            positional.push(arg.clone());
            continue;
        };
        // Flags cluster (-AHP); an option taking an argument ends the cluster.
        for (pos, flag) in flags.char_indices() {
            let needs_arg = matches!(flag, 'c' | 'f' | 'k' | 'l' | 'm' | 'o' | 's');
            if needs_arg {
                let optarg = if pos + 1 < flags.len() {
                    flags[pos + 1..].to_string()
                } else if i < args.len() {
                    i += 1;
                    args[i - 1].clone()
                } else {
                    return err(format!("-{flag} needs an argument (see capvm -h)"));
                };
                match flag {
                    'c' => parse_cpus(&mut tree, &optarg)?,
                    'f' => parse_fw_cfg_file(&mut tree, &optarg)?,
                    'k' => tree.read_file(&PathBuf::from(&optarg))?,
                    'l' if optarg == "help" => return Ok(Action::ListLpc),
                    'l' => parse_lpc(&mut tree, &optarg)?,
                    'm' => {
                        parse_memsize(&optarg)?;
                        tree.set("memory.size", &optarg);
                    }
                    'o' => tree.set_assignment(&optarg)?,
                    's' if optarg == "help" => return Ok(Action::ListSlots),
                    's' => parse_slot(&mut tree, &optarg)?,
                    _ => unreachable!(),
                }
                break;
            }
            match flag {
                'A' => tree.set("acpi_tables", "true"),
                'D' => tree.set("destroy_on_poweroff", "true"),
                'e' => tree.set("x86.strictio", "true"),
                'H' => tree.set("x86.vmexit_on_hlt", "true"),
                'P' => tree.set("x86.vmexit_on_pause", "true"),
                'S' => tree.set("memory.wired", "true"),
                'u' => tree.set("rtc.use_localtime", "false"),
                'w' => tree.set("x86.strictmsr", "false"),
                'h' => return Ok(Action::Usage),
                other => return err(format!("unknown or unsupported option -{other} (see capvm -h)")),
            }
        }
    }
    match positional.as_slice() {
        [] => {}
        [name] => tree.set("name", name),
        [_, extra, ..] => return err(format!("unexpected argument '{extra}': the VM name comes last, once")),
    }
    Ok(if print_policy { Action::PrintPolicy(tree) } else { Action::Run(tree) })
}

/// `-c [[cpus=]numcpus][,sockets=n][,cores=n][,threads=n]`.
fn parse_cpus(tree: &mut ConfigTree, arg: &str) -> Result<(), ConfigError> {
    for (n, part) in arg.split(',').enumerate() {
        match part.split_once('=') {
            Some((k @ ("cpus" | "sockets" | "cores" | "threads"), v)) => tree.set(k, v),
            None if n == 0 => tree.set("cpus", part),
            _ => return err(format!("-c {arg}: expected [[cpus=]n][,sockets=n][,cores=n][,threads=n]")),
        }
    }
    Ok(())
}

/// `-f name,string=VALUE` or `-f name,file=PATH`: a file firmware finds in
/// fw_cfg (`fw_cfg.user.N.{name,string,file}`).
fn parse_fw_cfg_file(tree: &mut ConfigTree, arg: &str) -> Result<(), ConfigError> {
    let (name, data) = arg.split_once(',').unwrap_or((arg, ""));
    let Some((kind @ ("string" | "file"), value)) = data.split_once('=') else {
        return err(format!("-f {arg}: expected name,string=VALUE or name,file=PATH"));
    };
    if name.is_empty() || name.len() > 55 {
        return err(format!("-f {arg}: a fw_cfg file name has 1 to 55 bytes"));
    }
    if name.starts_with("etc/") || name == "bootorder" {
        return err(format!("-f {arg}: etc/ and bootorder are capvm's own; name yours opt/..."));
    }
    let n = tree.keys_under("fw_cfg.user.").filter(|k| k.ends_with(".name")).count();
    tree.set(&format!("fw_cfg.user.{n}.name"), name);
    tree.set(&format!("fw_cfg.user.{n}.{kind}"), value);
    Ok(())
}

/// `-l lpc_device,conf`.
fn parse_lpc(tree: &mut ConfigTree, arg: &str) -> Result<(), ConfigError> {
    let (dev, conf) = arg.split_once(',').unwrap_or((arg, ""));
    let dev = dev.to_ascii_lowercase();
    if dev == "bootrom" {
        // bhyve: -l bootrom,ROMFILE[,VARFILE].
        let (rom, vars) = conf.split_once(',').unwrap_or((conf, ""));
        if rom.is_empty() {
            return err("-l bootrom: give the firmware image: -l bootrom,/usr/share/seabios/bios-256k.bin");
        }
        tree.set("lpc.bootrom", rom);
        if !vars.is_empty() {
            tree.set("lpc.bootvars", vars);
        }
        return Ok(());
    }
    if !COM_PORTS.iter().any(|(c, _, _)| *c == dev) {
        return err(format!("-l {arg}: unknown LPC device '{dev}' (see -l help)"));
    }
    if conf.is_empty() {
        return err(format!("-l {dev}: give a backend: stdio, a tty path or a socket path"));
    }
    tree.set(&format!("lpc.{dev}.path"), conf);
    Ok(())
}

/// `-s [bus:]slot[:func],emulation[,conf]`.
fn parse_slot(tree: &mut ConfigTree, arg: &str) -> Result<(), ConfigError> {
    let mut parts = arg.splitn(3, ',');
    let loc = parts.next().unwrap_or("");
    let Some(emulation) = parts.next().filter(|e| !e.is_empty()) else {
        return err(format!("-s {arg}: expected slot[:func],emulation[,conf]"));
    };
    let nums: Vec<&str> = loc.split(':').collect();
    let (bus, slot, func) = match nums[..] {
        [s] => ("0", s, "0"),
        [s, f] => ("0", s, f),
        [b, s, f] => (b, s, f),
        _ => return err(format!("-s {arg}: slot is [bus:]slot[:func]")),
    };
    for (what, v) in [("bus", bus), ("slot", slot), ("function", func)] {
        if v.parse::<u8>().is_err() {
            return err(format!("-s {arg}: {what} '{v}' is not a number"));
        }
    }
    let prefix = format!("pci.{bus}.{slot}.{func}");
    if tree.get(&format!("{prefix}.device")).is_some() {
        return err(format!("-s {arg}: slot {slot}:{func} is already taken"));
    }
    tree.set(&format!("{prefix}.device"), emulation);
    let conf = parts.next().unwrap_or("");
    match devices::lookup(emulation).map_or(Conf::Flat { first: "path" }, |e| e.conf) {
        Conf::Flat { first } => {
            // As bhyve: the first bare word is the backend (a disk's path,
            // a NIC's tap), a later one a flag (`ro` means ro=true).
            for (i, opt) in conf.split(',').filter(|o| !o.is_empty()).enumerate() {
                let (k, v) = match opt.split_once('=') {
                    Some(kv) => kv,
                    None if i == 0 && !first.is_empty() => (first, opt),
                    None => (opt, "true"),
                };
                tree.set(&format!("{prefix}.{k}"), v);
            }
        }
        Conf::Ports { fixed, .. } => {
            // As bhyve's AHCI: `TYPE:PATH` opens the next port, the words
            // after it are that port's options.
            let mut port: Option<u32> = None;
            let mut next = 0;
            for (i, opt) in conf.split(',').filter(|o| !o.is_empty()).enumerate() {
                let typed = opt.split_once(':').filter(|(t, _)| fixed.is_none() && matches!(*t, "hd" | "cd"));
                let (ty, path) = match (typed, fixed) {
                    (Some((t, p)), _) => (t, p),
                    (None, Some(t)) if i == 0 => (t, opt),
                    (None, _) => {
                        let Some(n) = port else {
                            return err(format!("-s {arg}: start each port with hd:PATH or cd:PATH"));
                        };
                        let (k, v) = opt.split_once('=').unwrap_or((opt, "true"));
                        tree.set(&format!("{prefix}.port.{n}.{k}"), v);
                        continue;
                    }
                };
                if next >= 32 {
                    return err(format!("-s {arg}: an AHCI controller has at most 32 ports"));
                }
                tree.set(&format!("{prefix}.port.{next}.type"), ty);
                tree.set(&format!("{prefix}.port.{next}.path"), path);
                port = Some(next);
                next += 1;
            }
        }
    }
    Ok(())
}

pub fn slot_help() -> String {
    let mut s = String::from("PCI emulations (-s slot,emulation[,conf]):\n");
    for e in EMULATIONS {
        s += &format!("  {:<16} {}\n", e.name, e.help);
    }
    s
}

pub fn lpc_help() -> String {
    let mut s = String::from(
        "LPC devices (-l device,backend; backend is stdio, a tty path, or a socket path capvm listens on):\n",
    );
    for (name, base, irq) in COM_PORTS {
        s += &format!("  {name:<6} 16550A UART at I/O {base:#x}, IRQ {irq}\n");
    }
    s += "  bootrom firmware image (SeaBIOS): -l bootrom,ROMFILE; the vCPUs start at its reset vector\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> ConfigTree {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&args).unwrap() {
            Action::Run(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cli_ahci_words_open_a_port_at_each_type_path_as_bhyve() {
        let t = run(&["-s", "4,ahci,hd:/a.img,ro,ser=X,cd:/b.iso", "-s", "5,ahci-cd,/c.iso,bootindex=2", "vm"]);
        for (k, v) in [
            ("pci.0.4.0.device", "ahci"),
            ("pci.0.4.0.port.0.type", "hd"),
            ("pci.0.4.0.port.0.path", "/a.img"),
            ("pci.0.4.0.port.0.ro", "true"),
            ("pci.0.4.0.port.0.ser", "X"),
            ("pci.0.4.0.port.1.type", "cd"),
            ("pci.0.4.0.port.1.path", "/b.iso"),
            ("pci.0.5.0.device", "ahci-cd"),
            ("pci.0.5.0.port.0.type", "cd"),
            ("pci.0.5.0.port.0.path", "/c.iso"),
            ("pci.0.5.0.port.0.bootindex", "2"),
        ] {
            assert_eq!(t.get(k), Some(v), "{k}");
        }
        assert!(t.get("pci.0.4.0.port.1.ro").is_none(), "ro belongs to port 0 only");
        let args: Vec<String> = ["-s", "4,ahci,ro", "vm"].iter().map(|s| s.to_string()).collect();
        assert!(parse(&args).unwrap_err().0.contains("start each port with hd:PATH or cd:PATH"));
    }

    #[test]
    fn cli_fw_cfg_files_keep_their_order() {
        let t = run(&["-f", "opt/a,string=hello", "-f", "opt/b,file=/x.bin", "vm"]);
        assert_eq!(t.get("fw_cfg.user.0.name"), Some("opt/a"));
        assert_eq!(t.get("fw_cfg.user.0.string"), Some("hello"));
        assert_eq!(t.get("fw_cfg.user.1.name"), Some("opt/b"));
        assert_eq!(t.get("fw_cfg.user.1.file"), Some("/x.bin"));
        let args: Vec<String> = ["-f", "opt/a,blob=1", "vm"].iter().map(|s| s.to_string()).collect();
        assert!(parse(&args).unwrap_err().0.contains("expected name,string=VALUE or name,file=PATH"));
    }

    #[test]
    fn cli_handbook_line_sets_bhyve_variables() {
        let t = run(&[
            "-c",
            "1",
            "-m",
            "64M",
            "-s",
            "0,hostbridge",
            "-s",
            "31,lpc",
            "-l",
            "com1,stdio",
            "-o",
            "boot.kernel=g.elf",
            "vm0",
        ]);
        assert_eq!(t.get("cpus"), Some("1"));
        assert_eq!(t.get("memory.size"), Some("64M"));
        assert_eq!(t.get("pci.0.0.0.device"), Some("hostbridge"));
        assert_eq!(t.get("pci.0.31.0.device"), Some("lpc"));
        assert_eq!(t.get("lpc.com1.path"), Some("stdio"));
        assert_eq!(t.get("boot.kernel"), Some("g.elf"));
        assert_eq!(t.get("name"), Some("vm0"));
    }

    #[test]
    fn cli_clustered_flags_and_attached_arguments() {
        let t = run(&["-AHPuwSe", "-c2", "-m1G", "vm"]);
        assert_eq!(t.get("memory.wired"), Some("true"));
        assert_eq!(t.get("x86.strictio"), Some("true"));
        assert_eq!(t.get("cpus"), Some("2"));
        assert_eq!(t.get("memory.size"), Some("1G"));
    }

    #[test]
    fn cli_cpu_topology_forms() {
        let t = run(&["-c", "cpus=4,sockets=2,cores=2", "vm"]);
        assert_eq!((t.get("cpus"), t.get("sockets"), t.get("cores")), (Some("4"), Some("2"), Some("2")));
    }

    #[test]
    fn cli_help_forms() {
        let p = |a: &[&str]| parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        assert!(matches!(p(&["-s", "help"]), Action::ListSlots));
        assert!(matches!(p(&["-l", "help"]), Action::ListLpc));
        assert!(matches!(p(&["-h"]), Action::Usage));
        assert!(slot_help().contains("lpc"));
        assert!(lpc_help().contains("com4"));
    }

    #[test]
    fn cli_errors_are_one_clear_line() {
        for bad in [
            vec!["-Z", "vm"],
            vec!["-m"],
            vec!["-m", "12Q", "vm"],
            vec!["-l", "com9,stdio", "vm"],
            vec!["-l", "com1", "vm"],
            vec!["-s", "x,lpc", "vm"],
            vec!["-s", "31", "vm"],
            vec!["-s", "31,lpc", "-s", "31,lpc", "vm"],
            vec!["-o", "novalue", "vm"],
            vec!["vm", "extra"],
        ] {
            let args: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            let e = parse(&args).unwrap_err();
            assert!(!e.0.is_empty() && !e.0.contains('\n'), "{bad:?}: {e}");
        }
    }
}
