//! capvm: a bhyve-style hypervisor in which every device runs in its own process.
//!
//! This is the broker: it reads bhyve's command line, opens every host
//! resource, loads the guest kernel, starts the vCPU runner and the device
//! servers, and supervises them until the VM ends. See ARCHITECTURE.md.

use capvm::cli::{self, Action};
use capvm::supervisor::EXIT_ERROR;
use capvm::{config, vm};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(run(&args));
}

fn run(args: &[String]) -> i32 {
    let (tree, print_policy) = match cli::parse(args) {
        Ok(Action::Run(tree)) => (tree, false),
        Ok(Action::PrintPolicy(tree)) => (tree, true),
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
    if print_policy {
        print!("{}", capvm::print_policy::print(&cfg));
        return 0;
    }
    match vm::run(&cfg) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("capvm: {}: {e}", cfg.name);
            EXIT_ERROR
        }
    }
}
