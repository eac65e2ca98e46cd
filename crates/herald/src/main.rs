/// mimalloc rather than glibc's malloc: the server allocates small buffers on every request, and
/// glibc's allocator spent about a fifth of the CPU of a loaded server (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = herald::cli::Cli::parse_or_exit();
    match herald::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Not `eprintln!`, which panics when standard error is closed.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            // EX_TEMPFAIL: the same command may go through later (`herald --help` says so).
            if e.chain().any(|c| c.is::<herald::cli::TryLater>()) {
                std::process::ExitCode::from(75)
            } else if e.chain().any(|c| c.is::<herald::cli::CommandLineRefused>()) {
                // As for a flag clap refuses: the command line is to be mended.
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
