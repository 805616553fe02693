use std::process::ExitCode;

use clap::Parser;
use keygate_gateway::cli::{self, Cli};

fn main() -> ExitCode {
    // Before any thread starts: argon2's 19 MiB blocks go back to the system when freed
    // instead of staying in the heap of each thread that ran one.
    keygate_memory::release_large_allocations();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli::run(cli))
}
