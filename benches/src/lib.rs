//! Helpers for ferry's benchmark binaries (see `src/bin/nar_bench.rs` and `README.md`).
//!
//! The benches themselves are binaries run by hand (`cargo run --release -p ferry-benches --bin
//! nar_bench`); nothing here runs under `cargo test` except the trivial checks below.

pub mod nix_copy;

/// Where the generation-update store is and the link to emulate: the options `gen_update` and
/// `link_bench` share (`#[command(flatten)]`).
#[derive(Debug, clap::Args)]
pub struct GenUpdateLink {
    /// Work directory: the local store, the hosts and `generations.json` (written by gen_update).
    #[arg(long, default_value = "/tmp/genbench")]
    pub work: std::path::PathBuf,
    /// The ferry binary (also the hosts' agent).
    #[arg(long, default_value = "target/x86_64-unknown-linux-gnu/release/ferry")]
    pub ferry: std::path::PathBuf,
    /// Link rate.
    #[arg(long, default_value = "20mbit")]
    pub rate: String,
    /// One-way latency.
    #[arg(long, default_value = "40ms")]
    pub latency: String,
}

/// Summary of repeated timings of one tool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Fastest run.
    pub min: f64,
    /// Slowest run.
    pub max: f64,
}

/// Median, minimum and maximum of `samples`; `None` if there are none.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    Some(Summary { median, min: sorted[0], max: sorted[n - 1] })
}

/// `bytes` over `secs`, in GB/s (10^9 bytes per second).
pub fn gb_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / 1e9
    } else {
        f64::INFINITY
    }
}

/// The 1-, 5- and 15-minute load averages from `/proc/loadavg`.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// Fill `buf` with cheap pseudo-random bytes (xorshift64*), so generated files are neither
/// sparse nor all zeros.
pub fn fill_pseudo_random(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let word = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_and_even_counts() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(summarize(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(summarize(&[]).is_none());
    }
}
