//! The `precis` command-line tool: a thin wrapper over the library's CLI layer.

use clap::Parser;

/// mimalloc, kept longer than its default: see `precis::allocator`.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    precis::allocator::keep_freed_pages();
    // candle runs element-wise ops of 64k elements or more on a spinning pool
    // of its own, next to rayon's matrix-product threads; on a few cores they
    // compete (Marian beam search measured 14% slower with it). Unless the
    // user sizes it, that pool is the calling thread alone. Set before any
    // thread exists.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PRECIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,precis=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = precis::cli::Cli::parse();
    let code = match precis::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            precis::cli::EXIT_USAGE
        }
    };
    std::process::exit(code);
}
