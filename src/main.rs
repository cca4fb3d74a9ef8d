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

/// At most this many glibc malloc arenas. SQLite allocates its page caches
/// with the C allocator, from the threads of the database drivers and of the
/// blocking pool; glibc gives each contended thread an arena of its own (up
/// to eight per core), and each arena keeps what was freed in it. With two,
/// `onepd serve` after a burst of live deliveries to five destinations held
/// 402 MB instead of 506 MB (1M events).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 2;

fn main() -> ExitCode {
    // Before any thread starts, so every thread shares the few arenas.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the C allocator; it is called
    // before the process starts any other thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
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
