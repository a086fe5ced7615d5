//! `CAPVM_TESTS_WITHOUT_KVM=1` marks every test that boots a guest as
//! ignored (cfg `no_kvm`): a run without /dev/kvm shows them as ignored,
//! not as passed.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(no_kvm)");
    println!("cargo::rerun-if-env-changed=CAPVM_TESTS_WITHOUT_KVM");
    if std::env::var_os("CAPVM_TESTS_WITHOUT_KVM").is_some_and(|v| !v.is_empty() && v != "0") {
        println!("cargo::rustc-cfg=no_kvm");
    }
}
