//! The differential tester of transaction mode (design 9.1): client sessions generated from a
//! seed ([`sessions`]) run in two worlds in lockstep ([`world`]), each client with a PostgreSQL
//! session of its own and all of them through rotagate with a pool of one or two connections.
//! Every reply must be the same, message for message ([`proto`] says how replies are read and
//! what is compared). A failing program is shrunk to a small reproduction, printed with its
//! seed.
#![allow(dead_code)]

pub mod proto;
pub mod sessions;
pub mod world;

use crate::common::pg::Pg;
use sessions::{Gen, Step};
use std::time::{Duration, Instant};
use world::{Divergence, Worlds};

/// What one program was run with.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub seed: u64,
    pub clients: usize,
    pub pool: usize,
    /// Messages to send before the program winds down.
    pub messages: usize,
}

/// A program that diverged, shrunk.
pub struct Failure {
    pub shape: Shape,
    pub program: Vec<Step>,
    pub divergence: Divergence,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shape;
        writeln!(
            f,
            "transaction mode diverged from direct sessions: seed {} ({} clients, pool.size {}); \
             reproduction of {} steps:",
            s.seed,
            s.clients,
            s.pool,
            self.program.len()
        )?;
        for (i, step) in self.program.iter().enumerate() {
            let mark = if i == self.divergence.at { ">>" } else { "  " };
            writeln!(f, "{mark} {i:3} {step}")?;
        }
        writeln!(f, "direct:  {:?}", self.divergence.direct)?;
        write!(f, "proxied: {:?}", self.divergence.proxied)
    }
}

/// What one program came to.
pub struct Ran {
    pub messages: usize,
    /// It ended early at the divergence [`world::documented`] allows.
    pub documented: bool,
}

/// Generates and runs one program: the messages sent, or the failure (shrunk).
pub async fn run(pg: &Pg, shape: Shape) -> Result<Ran, Box<Failure>> {
    let mut worlds = Worlds::new(pg, shape.clients, shape.pool).await;
    let mut sessions = Gen::new(shape.seed, shape.clients, shape.pool);
    let mut program = Vec::new();
    let mut sent = 0;
    let mut closing = false;
    loop {
        let steps = if sent < shape.messages {
            vec![sessions.step(&worlds.protos)]
        } else if !closing {
            closing = true;
            worlds.closing_steps()
        } else {
            break;
        };
        for step in steps {
            sent += step.weight();
            program.push(step.clone());
            let Some(d) = worlds.apply(program.len() - 1, &step).await else {
                continue;
            };
            if world::documented(&d) {
                return Ok(Ran {
                    messages: sent,
                    documented: true,
                });
            }
            drop(worlds);
            return Err(Box::new(shrink(pg, shape, program, d).await));
        }
    }
    Ok(Ran {
        messages: sent,
        documented: false,
    })
}

/// Runs a recorded program (steps that cannot run in the state reached are left out, and the
/// clients are brought to rest at the end): the first divergence, and the steps that ran.
pub async fn replay(pg: &Pg, shape: Shape, program: &[Step]) -> (Option<Divergence>, Vec<Step>) {
    let mut worlds = Worlds::new(pg, shape.clients, shape.pool).await;
    let mut ran = Vec::new();
    for step in program {
        if !worlds.runnable(step, shape.pool) {
            continue;
        }
        ran.push(step.clone());
        if let Some(d) = worlds.apply(ran.len() - 1, step).await {
            return (Some(d).filter(|d| !world::documented(d)), ran);
        }
    }
    for step in worlds.closing_steps() {
        ran.push(step.clone());
        if let Some(d) = worlds.apply(ran.len() - 1, &step).await {
            return (Some(d).filter(|d| !world::documented(d)), ran);
        }
    }
    (None, ran)
}

/// Shrinks a failing program by leaving out chunks of steps while it still diverges (within a
/// time budget); the last step that still fails is where it stops.
async fn shrink(pg: &Pg, shape: Shape, program: Vec<Step>, first: Divergence) -> Failure {
    let mut best = program[..=first.at].to_vec();
    let mut divergence = first;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut chunk = best.len().div_ceil(2);
    while chunk >= 1 && Instant::now() < deadline {
        let mut at = 0;
        let mut shrunk = false;
        while at < best.len() && Instant::now() < deadline {
            let mut candidate = best.clone();
            candidate.drain(at..(at + chunk).min(best.len()));
            if let (Some(d), ran) = replay(pg, shape, &candidate).await {
                best = ran[..=d.at].to_vec();
                divergence = d;
                shrunk = true;
            } else {
                at += chunk;
            }
        }
        if !shrunk {
            chunk /= 2;
        }
    }
    Failure {
        shape,
        program: best,
        divergence,
    }
}

/// Seeds from `DIFF_SEED` (one) or a fresh one, printed so that a failure can be run again.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var("DIFF_SEED") {
        Ok(s) => s.parse().expect("DIFF_SEED is a number"),
        Err(_) => default,
    }
}

/// Messages a program from `DIFF_MESSAGES`, or `default`.
pub fn messages_from_env(default: usize) -> usize {
    match std::env::var("DIFF_MESSAGES") {
        Ok(s) => s.parse().expect("DIFF_MESSAGES is a number"),
        Err(_) => default,
    }
}
