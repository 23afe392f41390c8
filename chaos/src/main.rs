//! ironhub-chaos: fault injection with checkers that prove nothing acknowledged is lost.
//!
//! Modules: [`cli`] (command line), [`scenario`] (TOML files) and [`schedule`] (steps, seeded
//! generation), [`backend`] (the cluster: local processes, network namespaces), [`nemesis`] (runs
//! the schedule, probes liveness), [`workload`] (MQTT queue, retained, metrics), [`history`] (the
//! JSONL record), [`check`] (checkers), [`report`] (summary, JSON, HTML), [`run`] (one run).

mod api;
mod backend;
mod check;
mod cli;
mod history;
mod nemesis;
mod report;
mod run;
mod scenario;
mod schedule;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::check::Verdict;
use crate::cli::{Cli, Command};
use crate::history::Op;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ironhub-chaos: {e:#}");
            if e.downcast_ref::<run::Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Plan(a) => {
            let p = run::plan(&a)?;
            println!("# {} · seed {} · {:?} schedule · backend {}", p.name, p.seed, p.mode, p.backend.name());
            for (i, s) in p.steps.iter().enumerate() {
                println!("step {:>2}: {s}", i + 1);
            }
            Ok(true)
        }
        Command::Check { history } => {
            let events = history::read_jsonl(&history).map_err(|e| run::Usage(format!("{e:#}")))?;
            let qos = events.iter().find_map(|e| match e.op {
                Op::Publish { qos, .. } => Some(qos),
                _ => None,
            });
            let retained = events.iter().any(|e| matches!(e.op, Op::Write { .. }));
            let mut pass = true;
            for c in check::for_workloads(qos.is_some(), qos.unwrap_or(1), retained) {
                let r = c.check(&events);
                pass &= r.verdict == Verdict::Pass;
                let counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("{:?}  {:<13} {}", r.verdict, r.name, counts.join(" "));
                for d in &r.details {
                    println!("        - {d}");
                }
            }
            Ok(pass)
        }
        Command::Run(a) => {
            let p = run::plan(&a)?;
            let bin = run::find_bin(a.bin.as_deref());
            let out = a.out.clone().unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                PathBuf::from(format!("/tmp/ironhub-chaos/{}-seed{}-{t}", p.name, p.seed))
            });
            // The whole run is bounded: faults, recovery per step, drain, and a margin.
            let bound =
                p.duration_s + p.recovery_timeout.as_secs_f64() * 2.0 + p.drain_timeout.as_secs_f64() + 180.0;
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let r = rt.block_on(async move {
                match tokio::time::timeout(std::time::Duration::from_secs_f64(bound), run::run(p, bin, out))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => {
                        Err(anyhow::anyhow!("the run exceeded its bound of {bound:.0} s and was stopped"))
                    }
                }
            });
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            r
        }
    }
}
