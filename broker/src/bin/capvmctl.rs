//! capvmctl: the bhyvectl of capvm. Talks to running VMs through their
//! control sockets in `$CAPVM_RUNTIME_DIR` (default /run/capvm).
//!
//!   capvmctl --list
//!   capvmctl --vm=NAME --destroy
//!   capvmctl --vm=NAME --audit [--json]
//!   capvmctl --vm=NAME --get-stats

use capvm::control;

const USAGE: &str = "usage: capvmctl --list | --vm=NAME --destroy | --vm=NAME --audit [--json] | --vm=NAME --get-stats";

fn main() {
    std::process::exit(run(&std::env::args().skip(1).collect::<Vec<_>>()));
}

fn run(args: &[String]) -> i32 {
    let mut vm = None;
    let (mut list, mut destroy, mut audit, mut json, mut stats) = (false, false, false, false, false);
    for a in args {
        match a.as_str() {
            "--list" => list = true,
            "--destroy" => destroy = true,
            "--audit" => audit = true,
            "--json" => json = true,
            "--get-stats" => stats = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return 0;
            }
            other => match other.strip_prefix("--vm=") {
                Some(name) if !name.is_empty() => vm = Some(name.to_string()),
                _ => {
                    eprintln!("capvmctl: unknown argument '{other}'\n{USAGE}");
                    return 1;
                }
            },
        }
    }
    if list {
        return list_vms();
    }
    let Some(vm) = vm else {
        eprintln!("capvmctl: name a VM with --vm=NAME\n{USAGE}");
        return 1;
    };
    let what = match (destroy, audit, json, stats) {
        (true, false, false, false) => "destroy",
        (false, true, false, false) => "audit",
        (false, true, true, false) => "audit json",
        (false, false, false, true) => "stats",
        _ => {
            eprintln!("capvmctl: give one of --destroy, --audit [--json] or --get-stats\n{USAGE}");
            return 1;
        }
    };
    match control::request(&vm, what) {
        Ok(answer) => {
            print!("{answer}");
            0
        }
        Err(e) => {
            eprintln!("capvmctl: {e}");
            1
        }
    }
}

fn list_vms() -> i32 {
    let dir = control::runtime_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0; // no runtime directory: no VM has run
    };
    let mut names: Vec<String> =
        entries.flatten().filter_map(|e| e.file_name().to_str()?.strip_suffix(".sock").map(str::to_string)).collect();
    names.sort();
    for name in names {
        // A socket nobody answers on is a crashed broker's leftover: skip it.
        if let Ok(status) = control::ask(&control::socket_path(&name), "status") {
            let pid = status.split_whitespace().nth(1).unwrap_or("?");
            println!("{name}\tpid {pid}");
        }
    }
    0
}
