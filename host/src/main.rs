//! The `hearth` binary.

use clap::Parser;
use hearth::cli::{Cli, LogFormat, LogTarget, run};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

fn main() {
    // The host runs this same binary to compile plugin components in a
    // child process it can cap and kill (see `hearth::plugins::compile`).
    // Handled before clap so that it stays out of `--help`, and before
    // anything else starts: no logging, no async runtime, no threads.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == hearth::plugins::compile::WORKER_COMMAND)
    {
        std::process::exit(hearth::plugins::compile::worker_main(&args[2..]));
    }
    let cli = Cli::parse();
    // Before the async runtime starts any thread: candle reads the thread
    // count from the environment.
    if let Some(threads) = cli.threads {
        hearth::engine::configure_threads(threads);
    }
    // A server logs each request (and its plugin calls' failures) by
    // default; the one-shot commands only warnings.
    let default = if matches!(cli.command, hearth::cli::Command::Serve(_)) {
        "warn,hearth=info"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_env("HEARTH_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only for a person at a terminal, not in log files.
        .with_ansi(match cli.log_to {
            LogTarget::Stderr => std::io::IsTerminal::is_terminal(&std::io::stderr()),
            LogTarget::Stdout => std::io::IsTerminal::is_terminal(&std::io::stdout()),
        })
        .with_writer(match cli.log_to {
            LogTarget::Stderr => BoxMakeWriter::new(std::io::stderr),
            LogTarget::Stdout => BoxMakeWriter::new(std::io::stdout),
        });
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let json_log = cli.log_format == LogFormat::Json;
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Errors can quote a plugin (its manifest, a load failure).
            let error = hearth::plugins::sanitize(&format!("{e:#}"), 64 << 10);
            if json_log {
                // A log collector reading JSON lines gets the reason too.
                tracing::error!(%error, "exiting");
            } else {
                eprintln!("error: {error}");
            }
            1
        }
    };
    std::process::exit(code);
}
