//! capvm-uart: one 16550A UART (a COM port) in its own process.
//!
//! The register model is vm-superio's `Serial`; this server wires it to the
//! exit ring (register accesses from the vCPU runner), an irqfd (its
//! interrupt line) and a host backend (stdio, a tty, or a unix socket).
//! Started by the broker with its control socket at fd 3.

mod backend;
pub mod registers;
pub mod server;
