fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rustc-link-arg=-T{dir}/linker.ld");
    for arg in ["-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-Wl,-n"] {
        println!("cargo:rustc-link-arg={arg}");
    }
    println!("cargo:rerun-if-changed=linker.ld");
}
