//! Image locks, as QEMU takes them: an open-file-description (OFD) lock on
//! the whole image, exclusive for a read-write disk and shared for a
//! read-only one, so two VMs cannot both write one image, nor one write
//! what another reads. The lock belongs to the open file the device server
//! inherits and ends with it. When a lock is refused, the holder is found
//! through /proc (which process has the image open, and which VM that
//! process serves) so the error can name it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Takes the lock on `file`; Err(holder) if another open file holds a
/// conflicting one (holder: "VM vm1 (pid 123)", or "another process").
pub fn lock(file: &File, read_only: bool) -> Result<(), String> {
    let mut fl = libc::flock {
        l_type: if read_only { libc::F_RDLCK } else { libc::F_WRLCK } as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: F_OFD_SETLK on our own fd with a valid flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) } == 0 {
        return Ok(());
    }
    Err(holder(file).unwrap_or_else(|| "another process".to_string()))
}

/// Which VM has this image open: a process other than us with an fd to
/// the same inode, and the capvm broker above it.
fn holder(file: &File) -> Option<String> {
    let meta = file.metadata().ok()?;
    let me = std::process::id();
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else { continue };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino()));
        if holds {
            return Some(match vm_of(pid) {
                Some((broker, name)) => format!("VM {name} (capvm pid {broker})"),
                None => format!("pid {pid}"),
            });
        }
    }
    None
}

/// The capvm broker `pid` is or descends from, and its VM name (the last
/// word of its command line).
fn vm_of(mut pid: u32) -> Option<(u32, String)> {
    for _ in 0..8 {
        let dir = Path::new("/proc").join(pid.to_string());
        let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
        let exe = args.first().map(|a| String::from_utf8_lossy(a).into_owned()).unwrap_or_default();
        if Path::new(&exe).file_name().is_some_and(|n| n == "capvm") {
            let name = args.last().map(|a| String::from_utf8_lossy(a).into_owned())?;
            return Some((pid, name));
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let after = stat.rsplit_once(')')?.1;
        pid = after.split_whitespace().nth(1)?.parse().ok()?;
        if pid <= 1 {
            return None;
        }
    }
    None
}
