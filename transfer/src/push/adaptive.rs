//! Adaptive compression: pick the zstd level (and whether a delta is worth its CPU) from the
//! measured link rate and the measured compressor speeds, so that compression never limits a
//! fast link and bytes are minimal on a slow one.
//!
//! Pure: the push pipeline feeds observations ([`Controller::record_link`],
//! [`Controller::record_compression`]) and asks for a [`Choice`] per path
//! ([`Controller::choose`]). No clock, no I/O.
//!
//! # Model
//!
//! For each option (no compression, full zstd at level L, delta at level L) the controller
//! estimates the compressor speed `s` (NAR bytes/s, one core) and ratio `r` (NAR bytes / wire
//! bytes). With link rate `b` (wire bytes/s) the option delivers NAR bytes at
//! `min(s, b · r)`: the slower of the compressor and the link. The controller takes the options
//! whose delivery rate is within [`Controller::slack`] (10 %) of the best, and among those the one
//! with the fewest wire bytes (the highest ratio). So on a 20 Mbit/s link level 19 (2 MB/s) is
//! not chosen (the compressor would limit) but the highest level still faster than the link is;
//! on a 1 GB/s loopback only zstd's negative "fast" levels or no compression keep up.
//!
//! Levels: 0 is no compression; 1..=[`MAX_LEVEL`] are zstd's levels; [`FAST_LEVELS`] are zstd's
//! negative levels (`--fast=N`: faster than level 1 by up to 2x for a few percent of ratio), for
//! links that outrun level 1 (loopback, 10 GbE, or any link when the CPU is shared). Deltas
//! use positive levels only. A negative level has a lower ratio than level 1, so it wins only
//! where the compressor limits: as soon as the measured link slows down, the choice comes back
//! up to the levels a slow link needs.
//!
//! Priors are perf.md's figures (zstd 1.5, one core, ELF-heavy NAR); measurements replace them
//! per level (exponentially weighted), and a measured level scales the priors of the levels not
//! yet measured (a slower machine is slower at every level). Delta priors: speed 0.6x full at the
//! same level, ratio 2x (perf.md §4: patch-from gains 1.4–4.2x on real updates); the caller
//! should also report measured delta ratios, which then replace the prior.

/// What the user asked for with `--compress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressSetting {
    /// Follow the link (the default).
    #[default]
    Auto,
    /// `--compress LEVEL` (0 = no compression).
    Level(i32),
    /// `--compress max`: fewest bytes, whatever the CPU cost (delta at [`MAX_LEVEL`]).
    Max,
}

/// The highest level the controller picks (and `--compress max` uses).
pub const MAX_LEVEL: i32 = crate::delta::stream::MAX_LEVEL;

impl std::str::FromStr for CompressSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CompressSetting::Auto),
            "max" => Ok(CompressSetting::Max),
            "none" | "off" => Ok(CompressSetting::Level(0)),
            _ => match s.parse::<i32>() {
                Ok(l) if (0..=MAX_LEVEL).contains(&l) => Ok(CompressSetting::Level(l)),
                _ => Err(format!(
                    "--compress: expected auto, max, none or 0..={MAX_LEVEL}, got {s:?}"
                )),
            },
        }
    }
}

/// Configuration from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdaptiveConfig {
    /// `--compress`.
    pub compress: CompressSetting,
    /// `--no-delta`.
    pub no_delta: bool,
}

/// How to send one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// zstd level; 0 = uncompressed, negative = zstd's fast levels ([`FAST_LEVELS`]).
    pub level: i32,
    /// Send as a delta against a base (when one is available).
    pub delta: bool,
}

/// The options the controller weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Full,
    Delta,
}

/// zstd's negative ("fast") levels the controller weighs, fastest last.
pub const FAST_LEVELS: [i32; 4] = [-1, -3, -5, -7];

/// The lowest level the controller tracks.
const MIN_LEVEL: i32 = -7;

/// Levels tracked, [`MIN_LEVEL`]..=[`MAX_LEVEL`] (0 included, never measured).
const LEVELS: usize = (MAX_LEVEL - MIN_LEVEL) as usize + 1;

/// Index of `level` in the per-level tables.
fn slot(level: i32) -> usize {
    (level.clamp(MIN_LEVEL, MAX_LEVEL) - MIN_LEVEL) as usize
}

/// The level of a table index.
fn level_of(slot: usize) -> i32 {
    slot as i32 + MIN_LEVEL
}

/// perf.md §3: `zstd -b` 1 thread on the LibreOffice NAR (MB/s, ratio); other levels
/// interpolated. The negative levels are scaled from level 1 by `zstd -b --fast=N` on a NAR of
/// `/usr/share/doc` here (speed 1.1–1.8x, ratio 0.98–0.91x of level 1's).
const PRIOR_POINTS: [(i32, f64, f64); 11] = [
    (-7, 560e6, 2.18),
    (-5, 500e6, 2.26),
    (-3, 420e6, 2.30),
    (-1, 350e6, 2.36),
    (1, 312e6, 2.40),
    (3, 174e6, 2.66),
    (6, 80e6, 2.78),
    (9, 38e6, 2.91),
    (12, 20e6, 3.00),
    (16, 6e6, 3.15),
    (19, 2.0e6, 3.33),
];

fn prior(level: i32) -> (f64, f64) {
    if level == 0 {
        return (f64::INFINITY, 1.0);
    }
    let pts = &PRIOR_POINTS;
    if level <= pts[0].0 {
        return (pts[0].1, pts[0].2);
    }
    for w in pts.windows(2) {
        let (l0, s0, r0) = w[0];
        let (l1, s1, r1) = w[1];
        if level <= l1 {
            let t = (level - l0).max(0) as f64 / (l1 - l0) as f64;
            // speed log-linear, ratio linear
            return ((s0.ln() + t * (s1.ln() - s0.ln())).exp(), r0 + t * (r1 - r0));
        }
    }
    (pts[pts.len() - 1].1, pts[pts.len() - 1].2)
}

/// A running estimate: exponentially weighted, `None` until observed.
#[derive(Debug, Clone, Copy, Default)]
struct Ewma(Option<f64>);

impl Ewma {
    fn add(&mut self, x: f64, weight: f64) {
        self.0 = Some(match self.0 {
            None => x,
            Some(v) => v + weight * (x - v),
        });
    }
}

/// The controller. One per push (per link); cheap to clone.
#[derive(Debug, Clone)]
pub struct Controller {
    config: AdaptiveConfig,
    link: Ewma,
    speed: [[Ewma; LEVELS]; 2],
    ratio: [[Ewma; LEVELS]; 2],
    /// Options within this fraction of the best delivery rate count as equally fast.
    pub slack: f64,
}

impl Controller {
    /// A controller with the given overrides and no observations.
    pub fn new(config: AdaptiveConfig) -> Self {
        Controller {
            config,
            link: Ewma::default(),
            speed: [[Ewma::default(); LEVELS]; 2],
            ratio: [[Ewma::default(); LEVELS]; 2],
            slack: 0.10,
        }
    }

    /// Start from a known link rate (wire bytes/s), e.g. the last run's, before any measurement.
    pub fn with_link_rate(mut self, bytes_per_sec: f64) -> Self {
        self.link = Ewma(Some(bytes_per_sec));
        self
    }

    /// The link carried `bytes` in `elapsed_secs` of time during which it was busy (the sender
    /// had data queued: time blocked in writes, not time waiting for the compressor).
    pub fn record_link(&mut self, bytes: u64, elapsed_secs: f64) {
        if elapsed_secs > 1e-3 && bytes >= 64 * 1024 {
            self.link.add(bytes as f64 / elapsed_secs, 0.3);
        }
    }

    /// The compressor turned `input` NAR bytes into `output` wire bytes at `level` in
    /// `cpu_secs` of one core; `delta` if it was a delta frame.
    pub fn record_compression(
        &mut self,
        level: i32,
        delta: bool,
        input: u64,
        output: u64,
        cpu_secs: f64,
    ) {
        if level == 0 {
            return;
        }
        let l = slot(level);
        let m = if delta { Mode::Delta } else { Mode::Full } as usize;
        if input >= 64 * 1024 && cpu_secs > 1e-4 {
            self.speed[m][l].add(input as f64 / cpu_secs, 0.3);
        }
        if input > 0 && output > 0 {
            self.ratio[m][l].add(input as f64 / output as f64, 0.3);
        }
    }

    /// The estimated link rate (wire bytes/s), if any.
    pub fn link_rate(&self) -> Option<f64> {
        self.link.0
    }

    /// (speed, ratio) estimate for `mode` at `level`.
    fn estimate(&self, mode: Mode, level: i32) -> (f64, f64) {
        if level == 0 {
            return (f64::INFINITY, 1.0);
        }
        let m = mode as usize;
        let (ps, pr) = prior(level);
        let (ps, pr) = match mode {
            Mode::Full => (ps, pr),
            Mode::Delta => (ps * 0.6, pr * 2.0),
        };
        // Machine factor: measured / prior speed at the nearest measured level of any mode.
        let factor = || {
            let mut best: Option<(i32, f64)> = None;
            for (mi, row) in self.speed.iter().enumerate() {
                for (li, e) in row.iter().enumerate() {
                    if let Some(v) = e.0 {
                        let d = (level_of(li) - level).abs();
                        let p = prior(level_of(li)).0
                            * if mi == Mode::Delta as usize { 0.6 } else { 1.0 };
                        if best.is_none_or(|(bd, _)| d < bd) {
                            best = Some((d, v / p));
                        }
                    }
                }
            }
            best.map_or(1.0, |(_, f)| f)
        };
        let speed = self.speed[m][slot(level)].0.unwrap_or_else(|| ps * factor());
        // Ratio: measured at this level, else the prior scaled by the nearest measured level's
        // measured / prior ratio in the same mode (the data decide how compressible things are).
        let ratio = self.ratio[m][slot(level)].0.unwrap_or_else(|| {
            let near = (0..LEVELS)
                .filter_map(|l| self.ratio[m][l].0.map(|r| (l, r)))
                .min_by_key(|(l, _)| (level_of(*l) - level).abs());
            match near {
                Some((l, r)) => {
                    let p = prior(level_of(l)).1 * if mode == Mode::Delta { 2.0 } else { 1.0 };
                    pr * r / p
                }
                None => pr,
            }
        });
        (speed, ratio.max(1.0))
    }

    /// The choice for the next path; `delta_possible` if a base is available for it.
    pub fn choose(&self, delta_possible: bool) -> Choice {
        let delta_ok = delta_possible && !self.config.no_delta;
        match self.config.compress {
            CompressSetting::Level(l) => {
                return Choice { level: l.clamp(0, MAX_LEVEL), delta: delta_ok && l > 0 }
            }
            CompressSetting::Max => return Choice { level: MAX_LEVEL, delta: delta_ok },
            CompressSetting::Auto => {}
        }
        // Unknown link: assume a fast one until measured (level 3, Nix's and zstd's default).
        let Some(link) = self.link.0 else {
            return Choice { level: 3, delta: delta_ok };
        };
        let mut options: Vec<(i32, Mode)> =
            [0].iter().chain(&FAST_LEVELS).map(|&l| (l, Mode::Full)).collect();
        for l in 1..=MAX_LEVEL {
            options.push((l, Mode::Full));
            if delta_ok {
                options.push((l, Mode::Delta));
            }
        }
        let scored: Vec<(i32, Mode, f64, f64)> = options
            .into_iter()
            .map(|(l, m)| {
                let (s, r) = self.estimate(m, l);
                (l, m, s.min(link * r), r)
            })
            .collect();
        let best = scored.iter().map(|o| o.2).fold(0.0, f64::max);
        let pick = scored
            .iter()
            .filter(|o| o.2 >= best * (1.0 - self.slack))
            .max_by(|a, b| a.3.total_cmp(&b.3).then(b.0.cmp(&a.0)))
            .expect("the best option is within the slack");
        Choice { level: pick.0, delta: pick.1 == Mode::Delta }
    }

    /// Expected delivery rate (NAR bytes/s) of a choice, for `--dry-run` style estimates.
    pub fn expected_rate(&self, choice: Choice) -> Option<f64> {
        let link = self.link.0?;
        let mode = if choice.delta { Mode::Delta } else { Mode::Full };
        let (s, r) = self.estimate(mode, choice.level);
        Some(s.min(link * r))
    }
}
