//! The `ironhub` binary: parses the command line and runs a command.
//! Exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration.

use clap::Parser;
use ironhub_broker::cli::{Cli, Command, ConfigCommand};
use ironhub_broker::config::Config;
use ironhub_broker::{ctl, server};
use ironhub_raft::NodeError;

/// mimalloc instead of glibc's allocator: the message path allocates and frees small buffers on
/// every tokio worker, and glibc's arenas spent about a fifth of the broker's CPU on it (perf,
/// QoS 1 unthrottled); see docs/benchmarks.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IRONHUB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if cfg.log.format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let code = match cli.command {
        Command::Config { command: ConfigCommand::Print(args) } => match args.load() {
            Ok(cfg) => match cfg.to_toml_redacted() {
                Ok(t) => {
                    print!("{t}");
                    0
                }
                Err(e) => {
                    eprintln!("ironhub: {e}");
                    1
                }
            },
            Err(e) => {
                eprintln!("ironhub: {e}");
                2
            }
        },
        Command::Serve(args) => match args.load() {
            Err(e) => {
                eprintln!("ironhub: {e}");
                2
            }
            Ok(cfg) => {
                init_logging(&cfg);
                run(server::serve(cfg))
            }
        },
        Command::Ctl(args) => run(ctl::run(args)),
    };
    std::process::exit(code);
}

fn run(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ironhub: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ironhub: {e:#}");
            let bad_config = |c: &(dyn std::error::Error + 'static)| {
                c.is::<ironhub_broker::config::ConfigError>()
                    || c.downcast_ref::<NodeError>().is_some_and(|n| {
                        matches!(n, NodeError::DataDir(_) | NodeError::Config(_) | NodeError::Refused(_))
                    })
            };
            if e.chain().any(bad_config) {
                2
            } else {
                1
            }
        }
    }
}
