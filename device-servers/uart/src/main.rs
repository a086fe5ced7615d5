//! The capvm-uart executable: see the library's documentation.

fn main() {
    capvm_ipc::child_main("capvm-uart", capvm_uart::server::run);
}
