//! The `precis` command-line tool: a thin wrapper over the library's CLI layer.

use clap::Parser;

fn main() {
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
