//! What kind of KVM this host has.

use std::path::Path;

/// The host's KVM backend, as far as it changes what a guest may be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKvm {
    /// VT-x or AMD-V: guest code runs on the CPU at every privilege level.
    HardwareAssisted,
    /// A paging-based backend (kvm_pvm) or any host without VT-x/AMD-V: guest
    /// CPL0 code goes through KVM's instruction emulator, which cannot execute
    /// everything the CPU can.
    Emulated,
}

impl HostKvm {
    /// Detects the backend: the kvm_pvm module, or a CPU without vmx/svm.
    pub fn detect() -> HostKvm {
        Self::detect_from(Path::new("/sys/module"), Path::new("/proc/cpuinfo"))
    }

    fn detect_from(modules: &Path, cpuinfo: &Path) -> HostKvm {
        if modules.join("kvm_pvm").exists() {
            return HostKvm::Emulated;
        }
        let flags = std::fs::read_to_string(cpuinfo).unwrap_or_default();
        let has_hw = flags
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if has_hw {
            HostKvm::HardwareAssisted
        } else {
            HostKvm::Emulated
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(module: bool, flags: &str) -> HostKvm {
        let dir = std::env::temp_dir().join(format!("capvm-host-{}-{module}-{}", std::process::id(), flags.len()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("modules")).unwrap();
        if module {
            std::fs::create_dir_all(dir.join("modules/kvm_pvm")).unwrap();
        }
        std::fs::write(dir.join("cpuinfo"), format!("processor : 0\nflags : {flags}\n")).unwrap();
        let r = HostKvm::detect_from(&dir.join("modules"), &dir.join("cpuinfo"));
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    #[test]
    fn host_with_kvm_pvm_module_is_emulated() {
        assert_eq!(fixture(true, "fpu svm sse"), HostKvm::Emulated);
    }

    #[test]
    fn host_with_vmx_is_hardware_assisted() {
        assert_eq!(fixture(false, "fpu vmx sse"), HostKvm::HardwareAssisted);
    }

    #[test]
    fn host_without_vmx_or_svm_is_emulated() {
        assert_eq!(fixture(false, "fpu sse hypervisor"), HostKvm::Emulated);
    }
}
