//! The CPUID a guest sees: what KVM supports, less what the host's KVM
//! cannot actually run, plus per-vCPU topology.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use crate::HostKvm;

// Leaf 1 ECX.
const CPUID1_ECX_FMA: u32 = 1 << 12;
const CPUID1_ECX_CX16: u32 = 1 << 13;
const CPUID1_ECX_POPCNT: u32 = 1 << 23;
const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const CPUID1_ECX_XSAVE: u32 = 1 << 26;
const CPUID1_ECX_OSXSAVE: u32 = 1 << 27;
const CPUID1_ECX_AVX: u32 = 1 << 28;
const CPUID1_ECX_F16C: u32 = 1 << 29;
const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;
// Leaf 7 subleaf 0 EBX.
const CPUID7_EBX_AVX2: u32 = 1 << 5;
const CPUID7_EBX_SMEP: u32 = 1 << 7;
const CPUID7_EBX_SMAP: u32 = 1 << 20;
/// AVX-512 F, DQ, IFMA, PF, ER, CD, BW, VL: all need XSAVE state.
const CPUID7_EBX_AVX512: u32 =
    (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31);
// Leaf 7 subleaf 0 ECX.
const CPUID7_ECX_PKU: u32 = 1 << 3;
const CPUID7_ECX_OSPKE: u32 = 1 << 4;
// Leaf 0x8000_0001 ECX: LZCNT (AMD's ABM). kvm_pvm's emulator runs lzcnt as
// bsr, without an exit, so a guest would get a wrong count no VMM can fix.
const CPUID_8000_0001_ECX_ABM: u32 = 1 << 5;
// Leaf 0x4000_0001 EAX: KVM's paravirtual features. On an emulated host a
// guest gets only those that need no hypercall: kvm-clock (MSR based) and
// the no-op I/O delay. `vmcall` from emulated CPL0 never completes there,
// so no hypercall-based one (PV IPIs stopped SMP bring-up; PV unhalt's
// kick and PV sched yield would strike later). docs/kvm-pvm.md.
const KVM_FEATURE_CLOCKSOURCE: u32 = 1 << 0;
const KVM_FEATURE_NOP_IO_DELAY: u32 = 1 << 1;
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 1 << 24;
const KVM_FEATURES_EMULATED_HOST: u32 =
    KVM_FEATURE_CLOCKSOURCE | KVM_FEATURE_NOP_IO_DELAY | KVM_FEATURE_CLOCKSOURCE2 | KVM_FEATURE_CLOCKSOURCE_STABLE_BIT;
// Leaf 0x8000_0008 EBX: FXSAVE/FXRSTOR always save the x87 error pointers,
// so Linux skips its `fnclex; emms; fild` workaround.
const CPUID_8000_0008_EBX_XSAVEERPTR: u32 = 1 << 2;

/// Fits KVM's supported CPUID to one vCPU of this VM.
pub fn for_vcpu(supported: &CpuId, host: HostKvm, vcpu_id: u32, is_amd: bool) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        fit_entry(e, host, vcpu_id, is_amd);
    }
    cpuid
}

/// True when the host CPUID vendor string is AuthenticAMD (or Hygon).
pub fn is_amd(supported: &CpuId) -> bool {
    supported
        .as_slice()
        .iter()
        .any(|e| e.function == 0 && (e.ebx == u32::from_le_bytes(*b"Auth") || e.ebx == u32::from_le_bytes(*b"Hygo")))
}

fn fit_entry(e: &mut kvm_cpuid_entry2, host: HostKvm, vcpu_id: u32, is_amd: bool) {
    let emulated = host == HostKvm::Emulated;
    match (e.function, e.index) {
        (1, _) => {
            e.ebx = (e.ebx & 0x00ff_ffff) | (vcpu_id << 24);
            e.ecx |= CPUID1_ECX_HYPERVISOR;
            if emulated {
                e.ecx &= !(CPUID1_ECX_CX16
                    | CPUID1_ECX_POPCNT
                    | CPUID1_ECX_XSAVE
                    | CPUID1_ECX_OSXSAVE
                    | CPUID1_ECX_AVX
                    | CPUID1_ECX_F16C
                    | CPUID1_ECX_FMA
                    // A TSC-deadline timer needs the TSC's frequency, which
                    // a guest cannot calibrate when its CPL0 code is
                    // emulated (Linux: "Unable to calibrate against PIT"):
                    // its ticks then stopped. Without it Linux checks the
                    // LAPIC timer against the PIT and, here, falls back to
                    // the PIT (docs/linux-guest.md).
                    | CPUID1_ECX_TSC_DEADLINE);
            }
        }
        (7, 0) if emulated => {
            e.ebx &= !(CPUID7_EBX_AVX2 | CPUID7_EBX_SMEP | CPUID7_EBX_SMAP | CPUID7_EBX_AVX512);
            e.ecx &= !(CPUID7_ECX_PKU | CPUID7_ECX_OSPKE);
        }
        // XSAVE state enumeration: nothing, since there is no XSAVE.
        (0xd, _) if emulated => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        (0xb, _) | (0x1f, _) => e.edx = vcpu_id,
        (0x8000_0001, _) if emulated => e.ecx &= !CPUID_8000_0001_ECX_ABM,
        (0x4000_0001, _) if emulated => e.eax &= KVM_FEATURES_EMULATED_HOST,
        (0x8000_0008, _) if emulated && is_amd => e.ebx |= CPUID_8000_0008_EBX_XSAVEERPTR,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, ebx: u32, ecx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, ebx, ecx, eax: 0xffff_ffff, edx: 0xffff_ffff, ..Default::default() }
    }

    fn fitted(host: HostKvm) -> Vec<kvm_cpuid_entry2> {
        let supported = CpuId::from_entries(&[
            entry(0, 0, u32::from_le_bytes(*b"Auth"), 0),
            entry(1, 0, 0x00ff_ffff, !CPUID1_ECX_HYPERVISOR),
            entry(7, 0, u32::MAX, u32::MAX),
            entry(0xd, 0, 1, 1),
            entry(0x8000_0008, 0, 0, 0),
            entry(0x8000_0001, 0, 0, u32::MAX),
            kvm_cpuid_entry2 { function: 0x4000_0001, eax: u32::MAX, ..Default::default() },
        ])
        .unwrap();
        let amd = is_amd(&supported);
        for_vcpu(&supported, host, 3, amd).as_slice().to_vec()
    }

    #[test]
    fn cpuid_on_emulated_host_hides_what_the_emulator_cannot_run() {
        let e = fitted(HostKvm::Emulated);
        assert_eq!(e[1].ecx & (CPUID1_ECX_CX16 | CPUID1_ECX_XSAVE | CPUID1_ECX_POPCNT), 0);
        assert_eq!(e[2].ebx & (CPUID7_EBX_SMEP | CPUID7_EBX_SMAP), 0);
        assert_eq!((e[3].eax, e[3].ebx), (0, 0));
        assert_ne!(e[4].ebx & CPUID_8000_0008_EBX_XSAVEERPTR, 0);
        assert_eq!(e[5].ecx & CPUID_8000_0001_ECX_ABM, 0, "no lzcnt");
        assert_eq!(e[6].eax, KVM_FEATURES_EMULATED_HOST, "kvm-clock, no hypercall-based PV features");
    }

    #[test]
    fn cpuid_on_hardware_host_keeps_features() {
        let e = fitted(HostKvm::HardwareAssisted);
        assert_ne!(e[1].ecx & CPUID1_ECX_CX16, 0);
        assert_ne!(e[2].ebx & CPUID7_EBX_SMEP, 0);
        assert_eq!(e[4].ebx, 0);
    }

    #[test]
    fn cpuid_sets_apic_id_and_hypervisor_bit() {
        let e = fitted(HostKvm::HardwareAssisted);
        assert_eq!(e[1].ebx >> 24, 3);
        assert_eq!(e[1].ebx & 0xff_ffff, 0xff_ffff);
        assert_ne!(e[1].ecx & CPUID1_ECX_HYPERVISOR, 0);
    }
}
