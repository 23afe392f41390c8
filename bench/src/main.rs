//! `ironhub-bench`: see the library docs (`ironhub_bench`) for the design.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ironhub_bench::cli::{parse_host_port, Cli, Command, ScenarioCmd};
use ironhub_bench::report::{self, RunResult};
use ironhub_bench::runner::{self, RunError};

async fn run_one(cmd: &ScenarioCmd) -> Result<RunResult, RunError> {
    let result = runner::run(cmd.name(), cmd.common(), |prefix| cmd.plan(prefix)).await?;
    println!("{}", report::summary(&result));
    Ok(result)
}

fn write_outputs(cmd: &ScenarioCmd, r: &RunResult, suffix: &str) -> anyhow::Result<()> {
    let with_suffix = |p: &std::path::Path| {
        if suffix.is_empty() {
            p.to_path_buf()
        } else {
            let stem = p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            let ext = p.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
            p.with_file_name(format!("{stem}-{suffix}{ext}"))
        }
    };
    if let Some(p) = &cmd.common().out {
        let p = with_suffix(p);
        report::write_json(r, &p).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("result written to {}", p.display());
    }
    if let Some(p) = &cmd.common().plot {
        let p = with_suffix(p);
        report::plot(r, &p)?;
        eprintln!(
            "plot written to {} (top: msg/s out blue, in red; bottom: latency ms p50 green, p99 red)",
            p.display()
        );
    }
    Ok(())
}

async fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    // A worker of a split run (started by `runner::run` itself): run the share, report, exit.
    let scenario = match &cli.command {
        Command::Run(cmd) => cmd,
        Command::Compare(c) => &c.scenario,
    };
    if scenario.common().worker.is_some() {
        return Ok(
            match ironhub_bench::workers::run_worker(scenario.common(), |prefix| scenario.plan(prefix)).await
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ironhub-bench worker: {e}");
                    ExitCode::from(2)
                }
            },
        );
    }
    match cli.command {
        Command::Run(cmd) => {
            let r = match run_one(&cmd).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ironhub-bench: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            write_outputs(&cmd, &r, "")?;
        }
        Command::Compare(c) => {
            let mut results = Vec::new();
            for (label, addr) in [("a", &c.a), ("b", &c.b)] {
                let Some((host, port)) = parse_host_port(addr) else {
                    eprintln!("ironhub-bench: --{label} {addr}: expected HOST:PORT");
                    return Ok(ExitCode::from(2));
                };
                let mut cmd = c.scenario.clone();
                cmd.common_mut().host = host;
                cmd.common_mut().port = port;
                println!("== {label}: {addr}");
                match run_one(&cmd).await {
                    Ok(r) => {
                        write_outputs(&cmd, &r, label)?;
                        results.push(r);
                    }
                    Err(e) => {
                        eprintln!("ironhub-bench: {e}");
                        return Ok(ExitCode::from(2));
                    }
                }
            }
            if let [a, b] = &results[..] {
                println!("== compare (A = {}, B = {})\n{}", c.a, c.b, report::compare(a, b));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ironhub-bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ironhub-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
