//! capvmctl: the bhyvectl of capvm. Talks to running VMs through their
//! control sockets in `$CAPVM_RUNTIME_DIR` (default /run/capvm).
//!
//!   capvmctl --list
//!   capvmctl --vm=NAME --destroy
//!   capvmctl --vm=NAME --audit [--json]
//!   capvmctl --vm=NAME --get-stats
//!   capvmctl --vm=NAME --screenshot=FILE.png

use capvm::control;

const USAGE: &str = "usage: capvmctl --list | --vm=NAME --destroy | --vm=NAME --audit [--json] | --vm=NAME --get-stats | --vm=NAME --screenshot=FILE.png";

fn main() {
    std::process::exit(run(&std::env::args().skip(1).collect::<Vec<_>>()));
}

fn run(args: &[String]) -> i32 {
    let mut vm = None;
    let mut screenshot = None;
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
            other => match (other.strip_prefix("--vm="), other.strip_prefix("--screenshot=")) {
                (Some(name), _) if !name.is_empty() => vm = Some(name.to_string()),
                (_, Some(file)) if !file.is_empty() => screenshot = Some(file.to_string()),
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
    if let Some(file) = screenshot {
        if destroy || audit || stats {
            eprintln!("capvmctl: --screenshot goes alone\n{USAGE}");
            return 1;
        }
        return match take_screenshot(&vm, std::path::Path::new(&file)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("capvmctl: {e}");
                1
            }
        };
    }
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
    let answer = if audit { control::audit(&vm, json) } else { control::request(&vm, what) };
    match answer {
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

/// Writes what VM `vm`'s display shows to `file` as PNG (8-bit RGB).
fn take_screenshot(vm: &str, file: &std::path::Path) -> Result<(), String> {
    use capvm_ipc::display::{DisplayState, Mode, Vram};
    use std::os::fd::AsFd;
    let (line, fds) = control::display(vm).map_err(|e| e.to_string())?;
    let size: Vec<u32> =
        line.strip_prefix("display ").unwrap_or("").split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let ([w, h], [vram, state]) = (size.as_slice(), fds.as_slice()) else {
        return Err(line.trim().trim_start_matches("error: ").to_string());
    };
    let vram = Vram::map_read_only(vram.as_fd()).map_err(|e| format!("cannot map the framebuffer: {e}"))?;
    let state =
        DisplayState::attach_read_only(state.as_fd()).map_err(|e| format!("cannot map the display state: {e}"))?;
    // The guest's mode, or black at the display's size while it has none.
    let mode = state.mode().and_then(Mode::checked);
    let (width, height) = mode.map_or((*w, *h), |m| (m.width, m.height));
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    let mut row = vec![0u8; width as usize * 4];
    for y in 0..height {
        if let Some(m) = &mode {
            vram.copy_row(m, y, &mut row);
        }
        rgb.extend(row.chunks(4).flat_map(|px| [px[2], px[1], px[0]]));
    }
    let out = std::fs::File::create(file).map_err(|e| format!("cannot create {}: {e}", file.display()))?;
    let mut png = png::Encoder::new(std::io::BufWriter::new(out), width, height);
    png.set_color(png::ColorType::Rgb);
    png.set_depth(png::BitDepth::Eight);
    let written = png.write_header().and_then(|mut w| w.write_image_data(&rgb));
    written.map_err(|e| format!("cannot write {}: {e}", file.display()))
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
