//! capvm: a bhyve-style hypervisor in which every device runs in its own process.
//!
//! This is the broker: it reads bhyve's command line, opens every host
//! resource, loads the guest kernel, starts the vCPU runner and the device
//! servers, and supervises them until the VM ends. See ARCHITECTURE.md.

mod audit;
mod boot;
mod cli;
mod config;
mod console;
mod spawn;
mod supervisor;
mod vm;

use cli::Action;
use supervisor::EXIT_ERROR;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(run(&args));
}

fn run(args: &[String]) -> i32 {
    let tree = match cli::parse(args) {
        Ok(Action::Run(tree)) => tree,
        Ok(Action::Usage) => {
            println!("{}", cli::USAGE);
            return 0;
        }
        Ok(Action::ListSlots) => {
            print!("{}", cli::slot_help());
            return 0;
        }
        Ok(Action::ListLpc) => {
            print!("{}", cli::lpc_help());
            return 0;
        }
        Err(e) => {
            eprintln!("capvm: {e}");
            return EXIT_ERROR;
        }
    };
    let cfg = match config::VmConfig::from_tree(&tree) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("capvm: {e}");
            return EXIT_ERROR;
        }
    };
    match vm::run(&cfg) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("capvm: {}: {e}", cfg.name);
            EXIT_ERROR
        }
    }
}
