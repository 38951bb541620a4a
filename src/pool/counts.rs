//! What `/status` and the metrics show of the pools: connections per live generation.

use super::Pools;
use super::shared::Shared;
use std::sync::Arc;

/// Counts for one live generation, summed over workers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerationCounts {
    pub generation: u64,
    pub connections: u32,
    pub idle: u32,
    pub current: bool,
    /// Open connections on each worker (read one after another: a connection moving between
    /// workers meanwhile can be counted twice or not at all; `connections` is exact).
    pub by_worker: Vec<u32>,
}

impl Pools {
    /// Connection counts of the current and every still-draining generation (summed over a
    /// reader entry's hosts).
    pub fn counts(&self) -> Vec<GenerationCounts> {
        let mut out: Vec<GenerationCounts> = Vec::new();
        let mut seen: Vec<*const Shared> = Vec::new();
        let n = self.shards.len();
        for (k, shard) in self.shards.iter().enumerate() {
            let current = shard.current.load_full();
            let draining = shard.draining.lock().expect("draining lock").clone();
            let sets =
                std::iter::once((current, true)).chain(draining.into_iter().map(|g| (g, false)));
            for (set, is_current) in sets {
                for g in &set.gens {
                    let (open, idle) = g.counts();
                    if !is_current && open == 0 {
                        continue;
                    }
                    let at = match out.iter().position(|c| c.generation == g.id) {
                        Some(at) => at,
                        None => {
                            out.push(GenerationCounts {
                                generation: g.id,
                                connections: 0,
                                idle: 0,
                                current: is_current,
                                by_worker: vec![0; n],
                            });
                            out.len() - 1
                        }
                    };
                    let c = &mut out[at];
                    c.idle += idle;
                    c.by_worker[k] += open;
                    // Each host's count is exact across workers; it is added once.
                    if !seen.contains(&Arc::as_ptr(&g.shared)) {
                        seen.push(Arc::as_ptr(&g.shared));
                        c.connections += g.shared.open();
                    }
                }
            }
        }
        out
    }

    /// A reader entry's open connections per host, over the current and draining
    /// generations and every worker (empty for a writer entry).
    pub fn host_connections(&self) -> Vec<(crate::config::HostPort, u32)> {
        let Some(spread) = &self.spread else {
            return Vec::new();
        };
        let mut open = vec![0u32; spread.hosts().len()];
        let mut seen: Vec<*const Shared> = Vec::new();
        for shard in &self.shards {
            let draining = shard.draining.lock().expect("draining lock").clone();
            for set in std::iter::once(shard.current.load_full()).chain(draining) {
                for (i, g) in set.gens.iter().enumerate() {
                    if i < open.len() && !seen.contains(&Arc::as_ptr(&g.shared)) {
                        seen.push(Arc::as_ptr(&g.shared));
                        open[i] += g.shared.open();
                    }
                }
            }
        }
        spread.hosts().iter().cloned().zip(open).collect()
    }
}
