//! The VM's audit log: one JSON object a line for every forbidden syscall a
//! sandboxed child attempted. The file is created on the first record, so a
//! clean run leaves nothing behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use capvm_ipc::ViolationRecord;
use serde::{Deserialize, Serialize};

pub struct AuditLog {
    vm: String,
    path: PathBuf,
}

/// One audit record, as the log and `capvmctl --audit` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Seconds since the epoch.
    pub time: u64,
    pub vm: String,
    pub role: String,
    pub pid: u32,
    pub syscall: String,
    pub nr: u64,
    pub args: [u64; 6],
    pub ip: u64,
    /// "killed" (sandbox.violations=kill) or "denied" (log: EPERM).
    pub action: String,
}

impl AuditRecord {
    /// The record as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
    }
}

/// `openat(0xffffff9c, 0x5555..., 0x0, ...)`.
pub fn describe(v: &ViolationRecord) -> String {
    let args: Vec<String> = v.args.iter().map(|a| format!("{a:#x}")).collect();
    format!("{}({})", capvm_policy::syscall_name(v.nr), args.join(", "))
}

impl AuditLog {
    /// Makes the log's directory now, while the broker may (once confined,
    /// Landlock lets it create files there, not directories); the file
    /// itself waits for the first record.
    pub fn new(vm: &str, path: &Path) -> AuditLog {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        AuditLog { vm: vm.to_string(), path: path.to_path_buf() }
    }

    /// Appends one record and returns it.
    pub fn record(&mut self, role: &str, pid: u32, v: &ViolationRecord) -> AuditRecord {
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let record = AuditRecord {
            time,
            vm: self.vm.clone(),
            role: role.to_string(),
            pid,
            syscall: capvm_policy::syscall_name(v.nr),
            nr: v.nr,
            args: v.args,
            ip: v.ip,
            action: if v.killed { "killed" } else { "denied" }.to_string(),
        };
        if let Err(e) = self.append(&record.to_json()) {
            eprintln!("capvm: cannot write the audit log {}: {e}", self.path.display());
        }
        record
    }

    /// Appends that `device` kept vCPU `vcpu` waiting `waited_ms` (the
    /// runner's exit-ring watchdog): a server wedged or stopped on purpose.
    pub fn note_late(&mut self, device: &str, vcpu: u32, waited_ms: u64) {
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let line = serde_json::json!({
            "time": time,
            "vm": self.vm,
            "role": device,
            "event": "late",
            "vcpu": vcpu,
            "waited_ms": waited_ms,
        });
        if let Err(e) = self.append(&line.to_string()) {
            eprintln!("capvm: cannot write the audit log {}: {e}", self.path.display());
        }
    }

    fn append(&self, line: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        writeln!(f, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_the_syscall_append_lines_and_are_json() {
        let path = std::env::temp_dir().join(format!("capvm-audit-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut log = AuditLog::new("vm\"0", &path);
        let v = ViolationRecord { nr: 257, args: [1, 2, 3, 4, 5, 6], ip: 7, killed: false };
        let r = log.record("uart (com1)", 42, &v).to_json();
        assert!(r.contains("\"syscall\":\"openat\"") && r.contains("\"action\":\"denied\""), "{r}");
        log.record("uart (com1)", 42, &v);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        for line in text.lines() {
            let parsed: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(parsed["vm"], "vm\"0", "quotes survive");
            assert_eq!(parsed["args"][5], 6);
        }
        std::fs::remove_file(&path).unwrap();
        assert_eq!(describe(&v), "openat(0x1, 0x2, 0x3, 0x4, 0x5, 0x6)");
    }
}
