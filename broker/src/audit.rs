//! The VM's audit log: one JSON object a line for every forbidden syscall a
//! sandboxed child attempted. The file is created on the first record, so a
//! clean run leaves nothing behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use capvm_ipc::ViolationRecord;

pub struct AuditLog {
    vm: String,
    path: PathBuf,
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `openat(0xffffff9c, 0x5555..., 0x0, ...)`.
pub fn describe(v: &ViolationRecord) -> String {
    let args: Vec<String> = v.args.iter().map(|a| format!("{a:#x}")).collect();
    format!("{}({})", capvm_policy::syscall_name(v.nr), args.join(", "))
}

impl AuditLog {
    pub fn new(vm: &str, path: &Path) -> AuditLog {
        AuditLog { vm: vm.to_string(), path: path.to_path_buf() }
    }

    /// Appends one record and returns it (the same JSON object).
    pub fn record(&mut self, role: &str, pid: u32, v: &ViolationRecord) -> String {
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let args: Vec<String> = v.args.iter().map(|a| a.to_string()).collect();
        let json = format!(
            "{{\"time\":{time},\"vm\":{},\"role\":{},\"pid\":{pid},\"syscall\":{},\"nr\":{},\"args\":[{}],\"ip\":{},\"action\":{}}}",
            json_str(&self.vm),
            json_str(role),
            json_str(&capvm_policy::syscall_name(v.nr)),
            v.nr,
            args.join(","),
            v.ip,
            json_str(if v.killed { "killed" } else { "denied" }),
        );
        if let Err(e) = self.append(&json) {
            eprintln!("capvm: cannot write the audit log {}: {e}", self.path.display());
        }
        json
    }

    fn append(&self, line: &str) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        writeln!(f, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }

    #[test]
    fn records_name_the_syscall_and_append_lines() {
        let path = std::env::temp_dir().join(format!("capvm-audit-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut log = AuditLog::new("vm0", &path);
        let v = ViolationRecord { nr: 257, args: [1, 2, 3, 4, 5, 6], ip: 7, killed: false };
        let r = log.record("uart (com1)", 42, &v);
        assert!(r.contains("\"syscall\":\"openat\"") && r.contains("\"action\":\"denied\""), "{r}");
        log.record("uart (com1)", 42, &v);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(describe(&v), "openat(0x1, 0x2, 0x3, 0x4, 0x5, 0x6)");
    }
}
