//! The long run of transaction mode's differential tester (tests/differential.rs has the short
//! one): programs from consecutive seeds, each in fresh schemas with a fresh rotagate, with two
//! clients on `pool.size` 1 and three on `pool.size` 2 in turn, until DIFF_STEPS messages have
//! been sent (default 1,000,000). Prints progress, and at the first divergence its shrunk
//! reproduction and seed, then exits non-zero.
//!
//!     cargo bench --bench differential
//!     DIFF_STEPS=10000000 DIFF_FIRST_SEED=1000 cargo bench --bench differential

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/diff/mod.rs"]
mod diff;

use diff::{Shape, run};
use std::time::Instant;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let budget = env("DIFF_STEPS", 1_000_000) as usize;
    let first = env("DIFF_FIRST_SEED", 1_000_000);
    let per_program = env("DIFF_PROGRAM", 2_000) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pg = common::app_cluster();
        diff::world::prepare_cluster(&pg);
        let started = Instant::now();
        let (mut sent, mut programs, mut documented) = (0usize, 0u64, 0u64);
        while sent < budget {
            let seed = first + programs;
            let (clients, pool) = if programs % 2 == 0 { (2, 1) } else { (3, 2) };
            let shape = Shape {
                seed,
                clients,
                pool,
                messages: per_program,
            };
            match run(&pg, shape).await {
                Ok(ran) => {
                    sent += ran.messages;
                    documented += u64::from(ran.documented);
                }
                Err(failure) => {
                    eprintln!("{failure}");
                    eprintln!("after {sent} messages in {programs} programs");
                    std::process::exit(1);
                }
            }
            programs += 1;
            if programs % 50 == 0 {
                println!(
                    "{sent} messages, {programs} programs (seeds {first}..{seed}), no divergence \
                     ({documented} ended at the documented one), {:.0} s",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        println!(
            "done: {sent} messages in {programs} programs (seeds {first}..{}), no divergence \
             ({documented} ended at the documented one), {:.0} s",
            first + programs - 1,
            started.elapsed().as_secs_f64()
        );
    });
}
