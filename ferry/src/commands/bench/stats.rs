//! The pure parts of `ferry bench --compare`: link specs (`lan=1gbit/1ms,…`), the median and
//! spread of a tool's runs, and ferry's ratio to each peer. No IO: numbers in, numbers out.

use std::time::Duration;

use anyhow::{bail, Context};

/// One link of `--links`: a name, a rate (bytes per second; infinite for loopback) and a one-way
/// latency.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// `lan`, `wan`, … (`loopback` for the unshaped one).
    pub name: String,
    /// Bytes per second; `f64::INFINITY` for no rate limit.
    pub rate: f64,
    /// One way.
    pub latency: Duration,
}

impl Link {
    /// The unshaped link every `--compare` run starts with.
    pub fn loopback() -> Link {
        Link { name: "loopback".into(), rate: f64::INFINITY, latency: Duration::ZERO }
    }

    /// Rate in Mbit/s (10^6), for tables and plots; `None` when unshaped.
    pub fn mbit(&self) -> Option<f64> {
        self.rate.is_finite().then(|| self.rate * 8.0 / 1e6)
    }
}

/// `20mbit` → bytes per second (`unlimited` → infinity).
pub fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let t = text.trim().to_ascii_lowercase();
    if t == "unlimited" || t == "inf" {
        return Ok(f64::INFINITY);
    }
    let (num, scale) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(unit, scale)| t.strip_suffix(unit).map(|n| (n, *scale)))
        .with_context(|| format!("rate {text:?}: expected a number and kbit, mbit or gbit"))?;
    let n: f64 = num.trim().parse().with_context(|| format!("rate {text:?}: bad number"))?;
    if !(n > 0.0 && n.is_finite()) {
        bail!("rate {text:?}: must be positive");
    }
    Ok(n * scale / 8.0)
}

/// `40ms` → duration (a bare number is milliseconds).
pub fn parse_latency(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim().to_ascii_lowercase();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t.as_str(), 1e-3)
    };
    let n: f64 = num.trim().parse().with_context(|| format!("latency {text:?}: bad number"))?;
    if !(n >= 0.0 && n.is_finite()) {
        bail!("latency {text:?}: must be zero or positive");
    }
    Ok(Duration::from_secs_f64(n * scale))
}

/// `lan=1gbit/1ms,wan=100mbit/20ms` → links, in order. An empty text is no link (loopback only).
pub fn parse_links(text: &str) -> anyhow::Result<Vec<Link>> {
    let mut links: Vec<Link> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, spec) = item
            .split_once('=')
            .with_context(|| format!("--links {item:?}: expected NAME=RATE/LATENCY"))?;
        let (rate, latency) = spec
            .split_once('/')
            .with_context(|| format!("--links {item:?}: expected NAME=RATE/LATENCY"))?;
        let name = name.trim();
        if name.is_empty() || name == "loopback" || links.iter().any(|l| l.name == name) {
            bail!("--links {item:?}: the name must be new, not empty and not `loopback`");
        }
        let rate = parse_rate(rate)?;
        if !rate.is_finite() {
            bail!("--links {item:?}: a shaped link needs a finite rate");
        }
        links.push(Link { name: name.to_owned(), rate, latency: parse_latency(latency)? });
    }
    Ok(links)
}

/// The median and range of some runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The middle value (mean of the two middle ones for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// `None` for no samples (or any NaN).
    pub fn of(samples: &[f64]) -> Option<Spread> {
        if samples.is_empty() || samples.iter().any(|s| s.is_nan()) {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { median, min: v[0], max: v[n - 1] })
    }
}

/// ferry's time over a peer's: below 1, ferry is faster. `None` without both medians, or when
/// the peer's is zero.
pub fn ratio(ferry: Option<Spread>, peer: Option<Spread>) -> Option<f64> {
    let (f, p) = (ferry?.median, peer?.median);
    (p > 0.0).then(|| f / p)
}

/// One row of the report: a tool on a link, over all its rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The link's name.
    pub link: String,
    /// The tool's name (`ferry`, `nix copy ssh://`, …).
    pub tool: String,
    /// Wall seconds.
    pub seconds: Option<Spread>,
    /// Bytes counted at the link.
    pub wire_bytes: Option<Spread>,
    /// ferry's median time over this tool's, on the same link (`None` for ferry itself).
    pub ferry_ratio: Option<f64>,
}

/// Per link, per tool, the spreads of `(seconds, wire bytes)` samples, and ferry's ratio to each
/// other tool of the same link. `samples`: `(link, tool, seconds, wire bytes)` for each run that
/// succeeded; the order of links and tools is their first appearance.
pub fn table(samples: &[(String, String, f64, f64)], ferry: &str) -> Vec<Row> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for (l, t, _, _) in samples {
        if !keys.contains(&(l.as_str(), t.as_str())) {
            keys.push((l, t));
        }
    }
    let spread = |link: &str, tool: &str, pick: fn(&(String, String, f64, f64)) -> f64| {
        let v: Vec<f64> = samples.iter().filter(|s| s.0 == link && s.1 == tool).map(pick).collect();
        Spread::of(&v)
    };
    keys.iter()
        .map(|(link, tool)| {
            let seconds = spread(link, tool, |s| s.2);
            let ferry_ratio =
                (*tool != ferry).then(|| ratio(spread(link, ferry, |s| s.2), seconds)).flatten();
            Row {
                link: (*link).to_owned(),
                tool: (*tool).to_owned(),
                seconds,
                wire_bytes: spread(link, tool, |s| s.3),
                ferry_ratio,
            }
        })
        .collect()
}

/// The order tools run in round `round` (0-based): rotated by one each round, so no tool always
/// runs first (warm caches, a neighbour's load) or right after the same one.
pub fn round_order(tools: usize, round: usize) -> Vec<usize> {
    (0..tools).map(|i| (i + round) % tools.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_latencies() {
        assert_eq!(parse_rate("20mbit").unwrap(), 2.5e6);
        assert_eq!(parse_rate("512kbit").unwrap(), 64e3);
        assert!(parse_rate("unlimited").unwrap().is_infinite());
        assert!(parse_rate("20").is_err() && parse_rate("-1mbit").is_err());
        assert_eq!(parse_latency("40ms").unwrap(), Duration::from_millis(40));
        assert_eq!(parse_latency("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_latency("0").unwrap(), Duration::ZERO);
        assert!(parse_latency("fast").is_err());
    }

    #[test]
    fn links() {
        let l = parse_links("lan=1gbit/1ms, wan=100mbit/20ms,slow=20mbit/40ms").unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(
            l[0],
            Link { name: "lan".into(), rate: 1.25e8, latency: Duration::from_millis(1) }
        );
        assert_eq!(l[2].mbit(), Some(20.0));
        assert_eq!(l[1].latency, Duration::from_millis(20));
        assert!(parse_links("").unwrap().is_empty());
        assert!(Link::loopback().mbit().is_none());
        for bad in [
            "lan",
            "lan=1gbit",
            "=1gbit/1ms",
            "a=1gbit/1ms,a=2gbit/1ms",
            "loopback=1gbit/0",
            "x=unlimited/1ms",
            "x=fast/1ms",
            "x=1gbit/soon",
        ] {
            assert!(parse_links(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spreads() {
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[f64::NAN]), None);
        assert_eq!(Spread::of(&[3.0, 1.0, 2.0]), Some(Spread { median: 2.0, min: 1.0, max: 3.0 }));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 10.0]).unwrap().median, 3.0);
        assert_eq!(Spread::of(&[5.0]).unwrap(), Spread { median: 5.0, min: 5.0, max: 5.0 });
    }

    #[test]
    fn ratios_and_table() {
        let s = |v: f64| Spread::of(&[v]);
        assert_eq!(ratio(s(1.0), s(2.0)), Some(0.5));
        assert_eq!(ratio(s(1.0), s(0.0)), None);
        assert_eq!(ratio(None, s(2.0)), None);
        let sample = |l: &str, t: &str, sec: f64, b: f64| (l.to_owned(), t.to_owned(), sec, b);
        let rows = table(
            &[
                sample("loopback", "ferry", 1.0, 100.0),
                sample("loopback", "rsync", 2.0, 300.0),
                sample("loopback", "ferry", 3.0, 100.0),
                sample("loopback", "rsync", 6.0, 300.0),
                sample("lan", "rsync", 1.0, 10.0),
            ],
            "ferry",
        );
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].tool.as_str(), rows[0].ferry_ratio), ("ferry", None));
        assert_eq!(rows[0].seconds, Some(Spread { median: 2.0, min: 1.0, max: 3.0 }));
        assert_eq!(rows[1].ferry_ratio, Some(0.5));
        assert_eq!(rows[1].wire_bytes.unwrap().median, 300.0);
        // No ferry run on that link: no ratio.
        assert_eq!((rows[2].link.as_str(), rows[2].ferry_ratio), ("lan", None));
    }

    #[test]
    fn rounds_rotate() {
        assert_eq!(round_order(3, 0), vec![0, 1, 2]);
        assert_eq!(round_order(3, 1), vec![1, 2, 0]);
        assert_eq!(round_order(3, 5), vec![2, 0, 1]);
        assert!(round_order(0, 2).is_empty());
    }
}
