//! Staged rollouts (pure): `--rollout 1,25%,100%` or `rollout = [1, "25%", "100%"]` in the
//! deployment file deploys the selected machines in waves.
//!
//! - **Steps** are cumulative: each is a host count (`3`) or a percentage of the selected
//!   machines (`25%`, rounded up, so a non-empty percentage is at least one host). Step `i`
//!   says how many machines have been deployed once wave `i` ends; wave `i` is the machines
//!   between the previous step's count and its own, in selection (file) order. A step that adds
//!   nobody (e.g. `25%` of 2 machines after `1`) makes no wave; machines beyond the last step
//!   form one last wave, so a rollout always ends with every selected machine.
//! - **Going on**: a wave starts only when every machine of the previous wave succeeded, that is
//!   its system was activated and confirmed healthy (or it was on that system already). The
//!   first wave with a failure stops the run ([`WavePlan::stopped_by`]); the machines of later
//!   waves are not started. Finished waves stay, unless `--roll-back-on-failure` (the caller,
//!   [`crate::orchestrate::deploy`], rolls back every machine the run activated).
//!
//! Steps are checked where they are given: a count or percentage of 0, a percentage over 100,
//! and steps of one kind that decrease (`5,3`; `50%,25%`) are errors.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// One step of a rollout: how many machines have been deployed when its wave ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A number of machines.
    Hosts(usize),
    /// A percentage (1..=100) of the selected machines, rounded up.
    Percent(u8),
}

impl Step {
    /// The cumulative machine count this step reaches among `n` selected machines.
    fn reach(self, n: usize) -> usize {
        match self {
            Step::Hosts(k) => k.min(n),
            Step::Percent(p) => (n * usize::from(p)).div_ceil(100),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Hosts(k) => write!(f, "{k}"),
            Step::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Step {
    type Err = RolloutError;

    fn from_str(s: &str) -> Result<Step, RolloutError> {
        let s = s.trim();
        let bad = || RolloutError::BadStep(s.to_owned());
        let step = match s.strip_suffix('%') {
            Some(p) => {
                let p: u32 = p.trim().parse().map_err(|_| bad())?;
                if p > 100 {
                    return Err(RolloutError::OverHundred(s.to_owned()));
                }
                Step::Percent(p as u8)
            }
            None => Step::Hosts(s.parse().map_err(|_| bad())?),
        };
        if matches!(step, Step::Hosts(0) | Step::Percent(0)) {
            return Err(RolloutError::Zero(s.to_owned()));
        }
        Ok(step)
    }
}

/// Why a rollout's steps are not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    #[error("a rollout needs at least one step (e.g. 1,25%,100%)")]
    Empty,
    #[error("rollout step '{0}': a host count (3) or a percentage (25%)")]
    BadStep(String),
    #[error("rollout step '{0}': a wave of no host")]
    Zero(String),
    #[error("rollout step '{0}': more than 100%")]
    OverHundred(String),
    #[error("rollout step '{1}' after '{0}': steps are cumulative and must not decrease")]
    Decreasing(String, String),
}

/// The steps of a staged rollout (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    steps: Vec<Step>,
}

impl Rollout {
    /// A rollout of these steps, checked.
    pub fn new(steps: Vec<Step>) -> Result<Rollout, RolloutError> {
        if steps.is_empty() {
            return Err(RolloutError::Empty);
        }
        for pair in steps.windows(2) {
            let decreasing = match (pair[0], pair[1]) {
                (Step::Hosts(a), Step::Hosts(b)) => b < a,
                (Step::Percent(a), Step::Percent(b)) => b < a,
                _ => false,
            };
            if decreasing {
                return Err(RolloutError::Decreasing(pair[0].to_string(), pair[1].to_string()));
            }
        }
        Ok(Rollout { steps })
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The waves over `n` selected machines: ranges of machine indices, in order, none empty,
    /// together covering `0..n`.
    pub fn waves(&self, n: usize) -> WavePlan {
        let mut waves = Vec::new();
        let mut done = 0;
        for step in &self.steps {
            let reach = step.reach(n).max(done);
            if reach > done {
                waves.push(done..reach);
                done = reach;
            }
        }
        if done < n {
            waves.push(done..n);
        }
        WavePlan { waves }
    }
}

impl FromStr for Rollout {
    type Err = RolloutError;

    /// `1,25%,100%`.
    fn from_str(s: &str) -> Result<Rollout, RolloutError> {
        let steps = s.split(',').filter(|p| !p.trim().is_empty()).map(str::parse);
        Rollout::new(steps.collect::<Result<_, _>>()?)
    }
}

impl fmt::Display for Rollout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: Vec<String> = self.steps.iter().map(Step::to_string).collect();
        f.write_str(&steps.join(","))
    }
}

/// The waves of one run: which machines each wave deploys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavePlan {
    waves: Vec<Range<usize>>,
}

impl WavePlan {
    /// The waves' machine index ranges, in order.
    pub fn waves(&self) -> &[Range<usize>] {
        &self.waves
    }

    /// The wave (1-based) machine `i` belongs to.
    pub fn wave_of(&self, i: usize) -> usize {
        self.waves.iter().position(|w| w.contains(&i)).map_or(0, |w| w + 1)
    }

    /// The wave (1-based) whose outcome stops the run: the first with a machine that did not
    /// succeed (`ok[i]` per machine run so far, in order; machines past its end have not run).
    /// `None`: every wave run so far succeeded.
    pub fn stopped_by(&self, ok: &[bool]) -> Option<usize> {
        let failed = |i: usize| ok.get(i) == Some(&false);
        self.waves.iter().position(|w| w.clone().any(failed)).map(|w| w + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waves(spec: &str, n: usize) -> Vec<Range<usize>> {
        spec.parse::<Rollout>().unwrap().waves(n).waves().to_vec()
    }

    #[test]
    fn steps_are_cumulative_counts_or_percentages_rounded_up() {
        assert_eq!(waves("1,25%,100%", 8), vec![0..1, 1..2, 2..8]);
        assert_eq!(waves("1,25%,100%", 20), vec![0..1, 1..5, 5..20]);
        assert_eq!(waves("1, 50% ,100%", 5), vec![0..1, 1..3, 3..5]);
        assert_eq!(waves("2,4", 3), vec![0..2, 2..3]);
        // A step that adds nobody makes no wave; the rest after the last step is one wave.
        assert_eq!(waves("1,25%,100%", 2), vec![0..1, 1..2]);
        assert_eq!(waves("1,2", 5), vec![0..1, 1..2, 2..5]);
        assert_eq!(waves("10%", 3), vec![0..1, 1..3]);
        // A count after a larger percentage adds nobody.
        assert_eq!(waves("50%,1,100%", 4), vec![0..2, 2..4]);
        assert_eq!(waves("100%", 0), Vec::<Range<usize>>::new());
    }

    #[test]
    fn bad_steps_are_errors() {
        let err = |s: &str| s.parse::<Rollout>().unwrap_err();
        assert_eq!(err(""), RolloutError::Empty);
        assert_eq!(err("1,x"), RolloutError::BadStep("x".into()));
        assert_eq!(err("-1"), RolloutError::BadStep("-1".into()));
        assert_eq!(err("0,100%"), RolloutError::Zero("0".into()));
        assert_eq!(err("0%"), RolloutError::Zero("0%".into()));
        assert_eq!(err("150%"), RolloutError::OverHundred("150%".into()));
        assert_eq!(err("5,3"), RolloutError::Decreasing("5".into(), "3".into()));
        assert_eq!(
            err("50%,25%").to_string(),
            "rollout step '25%' after '50%': steps are cumulative and must not decrease"
        );
        assert_eq!("1,25%,100%".parse::<Rollout>().unwrap().to_string(), "1,25%,100%");
    }

    #[test]
    fn the_first_wave_with_a_failure_stops_the_run() {
        let plan = "1,25%,100%".parse::<Rollout>().unwrap().waves(8);
        assert_eq!((plan.wave_of(0), plan.wave_of(1), plan.wave_of(7)), (1, 2, 3));
        let mut ok = vec![true; 8];
        assert_eq!(plan.stopped_by(&ok), None);
        ok[1] = false;
        assert_eq!(plan.stopped_by(&ok), Some(2));
        ok[0] = false;
        assert_eq!(plan.stopped_by(&ok), Some(1));
        // Only the machines run so far count.
        assert_eq!(plan.stopped_by(&[true, true]), None);
        assert_eq!(plan.stopped_by(&[true, false]), Some(2));
        let one = "100%".parse::<Rollout>().unwrap().waves(3);
        assert_eq!((one.stopped_by(&[true, false, true]), one.wave_of(2)), (Some(1), 1));
    }
}
