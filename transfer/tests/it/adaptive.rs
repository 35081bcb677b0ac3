//! The adaptive controller's decisions on simulated links and compressors.

use transfer::push::adaptive::{
    AdaptiveConfig, Choice, CompressSetting, Controller, FAST_LEVELS, MAX_LEVEL,
};

const MBIT: f64 = 1e6 / 8.0;

fn auto() -> Controller {
    Controller::new(AdaptiveConfig::default())
}

#[test]
fn slow_link_gets_a_high_level_fast_link_a_low_one() {
    let slow = auto().with_link_rate(20.0 * MBIT).choose(false);
    assert!(slow.level >= 6, "20 Mbit/s: {slow:?}");
    assert!(
        slow.level < MAX_LEVEL,
        "level 19 (2 MB/s) would be slower than a 2.5 MB/s link: {slow:?}"
    );
    let very_slow = auto().with_link_rate(1.0 * MBIT).choose(false);
    assert_eq!(very_slow.level, MAX_LEVEL, "1 Mbit/s: {very_slow:?}");
    let loopback = auto().with_link_rate(1e9).choose(false);
    assert!(loopback.level <= 1, "1 GB/s: {loopback:?}");
    let gigabit = auto().with_link_rate(1000.0 * MBIT).choose(false);
    assert!(gigabit.level <= 3, "1 Gbit/s: {gigabit:?}");
}

#[test]
fn links_faster_than_level_one_get_a_fast_level_and_slow_links_bring_it_back_up() {
    let mut c = auto();
    // 250 MB/s: level 1 (312 MB/s at ratio 2.4) would limit, no compression sends 1.0x.
    for _ in 0..10 {
        c.record_link(250_000_000, 1.0);
    }
    let fast = c.choose(false);
    assert!(FAST_LEVELS.contains(&fast.level), "250 MB/s: {fast:?}");
    // Measured at 350 MB/s: still faster than the link sends uncompressed. At 175 MB/s, no
    // compression delivers more.
    c.record_compression(fast.level, false, 100 << 20, 50 << 20, 0.3);
    assert!(c.choose(false).level < 0, "{:?}", c.choose(false));
    let mut slow_cpu = c.clone();
    for _ in 0..10 {
        slow_cpu.record_compression(fast.level, false, 100 << 20, 50 << 20, 0.6);
    }
    assert_eq!(slow_cpu.choose(false).level, 0);
    // The link slows to 20 Mbit/s: back to a level that saves bytes.
    for _ in 0..20 {
        c.record_link(2_500_000, 1.0);
    }
    let slow = c.choose(false);
    assert!(slow.level >= 6, "20 Mbit/s after a fast spell: {slow:?}");
    // Deltas never take a negative level.
    let with_base = c.choose(true);
    assert!(!with_base.delta || with_base.level > 0, "{with_base:?}");
}

#[test]
fn deltas_on_slow_links_not_on_loopback() {
    let slow = auto().with_link_rate(20.0 * MBIT).choose(true);
    assert!(slow.delta && slow.level >= 3, "{slow:?}");
    let fast = auto().with_link_rate(1e9).choose(true);
    assert!(!fast.delta, "{fast:?}");
}

#[test]
fn link_rate_is_measured() {
    let mut c = auto();
    assert_eq!(c.choose(false), Choice { level: 3, delta: false }, "unknown link: zstd's default");
    for _ in 0..10 {
        c.record_link(2_500_000, 1.0); // 20 Mbit/s
    }
    assert!((c.link_rate().unwrap() - 2.5e6).abs() < 1e3);
    let slow = c.choose(false).level;
    for _ in 0..20 {
        c.record_link(1_000_000_000, 1.0);
    }
    let fast = c.choose(false).level;
    assert!(slow > fast, "{slow} then {fast}");
    // Tiny samples are ignored.
    c.record_link(10, 0.5);
    assert!(c.link_rate().unwrap() > 5e8);
}

#[test]
fn a_slow_machine_lowers_the_level() {
    let link = 20.0 * MBIT;
    let normal = auto().with_link_rate(link).choose(false).level;
    let mut c = auto().with_link_rate(link);
    // This machine compresses 4x slower than the priors at the level in use.
    c.record_compression(
        normal,
        false,
        100 << 20,
        35 << 20,
        (100 << 20) as f64 / (prior_speed(normal) / 4.0),
    );
    let slower = c.choose(false).level;
    assert!(slower < normal, "{normal} -> {slower}");
}

fn prior_speed(level: i32) -> f64 {
    // Same shape as the controller's priors: 312 MB/s at 1 down to 2 MB/s at 19.
    let t = (level - 1) as f64 / 18.0;
    (312e6f64.ln() + t * (2e6f64.ln() - 312e6f64.ln())).exp()
}

#[test]
fn measured_delta_ratio_decides() {
    let link = 100.0 * MBIT;
    let mut c = auto().with_link_rate(link);
    // Deltas that gain nothing (unrelated base) are not worth their CPU.
    for l in 1..=MAX_LEVEL {
        c.record_compression(l, true, 10 << 20, 4 << 20, 1.0);
    }
    assert!(!c.choose(true).delta);
}

#[test]
fn overrides() {
    let c = |compress, no_delta| {
        Controller::new(AdaptiveConfig { compress, no_delta }).with_link_rate(1e9)
    };
    assert_eq!(
        c(CompressSetting::Max, false).choose(true),
        Choice { level: MAX_LEVEL, delta: true }
    );
    assert_eq!(
        c(CompressSetting::Max, true).choose(true),
        Choice { level: MAX_LEVEL, delta: false }
    );
    assert_eq!(
        c(CompressSetting::Level(7), false).choose(false),
        Choice { level: 7, delta: false }
    );
    assert_eq!(c(CompressSetting::Level(0), false).choose(true), Choice { level: 0, delta: false });
    assert!(!c(CompressSetting::Auto, true).choose(true).delta);
    assert_eq!("max".parse::<CompressSetting>(), Ok(CompressSetting::Max));
    assert_eq!("12".parse::<CompressSetting>(), Ok(CompressSetting::Level(12)));
    assert_eq!("none".parse::<CompressSetting>(), Ok(CompressSetting::Level(0)));
    assert!("23".parse::<CompressSetting>().is_err());
    assert!("fast".parse::<CompressSetting>().is_err());
}
