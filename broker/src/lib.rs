//! The capvm broker as a library: the `capvm` and `capvmctl` binaries share
//! its configuration, control-socket and audit code.

pub mod acpi;
pub mod audit;
pub mod boot;
pub mod cli;
pub mod config;
pub mod confine;
pub mod console;
pub mod control;
pub mod devices;
pub mod fwcfg;
pub mod print_policy;
pub mod seccomp_notify;
pub mod served;
pub mod spawn;
pub mod supervisor;
pub mod vm;
