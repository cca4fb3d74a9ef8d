//! The `onepd` binary: the command line and the wiring of the crates below it.
//! No business logic lives here.
//!
//! Exit status: 0 success; 1 the check ran and the answer is no (`verify`
//! found a break); 2 a usage or runtime error. A closed stdout exits quietly.

/// mimalloc instead of the system allocator: the database drivers allocate and free
/// large argument buffers at a rate that makes glibc malloc a bottleneck.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod config;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
