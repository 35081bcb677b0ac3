//! Staged rollouts over SSH (`--rollout`, `--roll-back-on-failure`), on real sshd hosts with
//! health checks: four machines in three waves (1, then 3 cumulative, then the rest). A machine
//! of the second wave fails its health check: the third wave never starts, the table, the JSON
//! and the exit code say so; with `--roll-back-on-failure` the machines the run activated go
//! back to their previous generation.

use serde_json::Value;

use crate::deploy_ssh::{current, fleet, machine, root, Env, BASE};

#[test]
fn a_failing_wave_stops_the_rollout_and_can_roll_back_the_run() {
    let env = Env::new();
    let fleet = fleet(4);
    let names = ["a", "b", "c", "d"];
    // `c` (wave 2) fails its health check when `sick`.
    let file = |motd: &str, sick: bool| {
        let mut text = BASE.replace("MOTD", motd);
        for (name, sshd) in names.iter().zip(fleet.iter()) {
            let os = if *name == "c" && sick {
                "{ inherit = \"base\", health-checks = [{ command = \"echo sick >&2; exit 3\" }] }"
            } else {
                "\"base\""
            };
            text.push_str(&machine(name, sshd, os, "confirm-timeout = 20"));
        }
        env.write("fleet.toml", &text)
    };
    let generation = |name: &str| {
        let i = names.iter().position(|n| *n == name).unwrap();
        current(&root(&fleet.hosts[i]))
    };
    let waves = |s: &crate::deploy_ssh::Summary| -> Vec<Value> {
        names.iter().map(|n| s.machine(n)["wave"].clone()).collect()
    };

    // All healthy: three waves, every machine on generation 1.
    let s = env.deploy(0, &file("one", false), &["--rollout", "1,3,100%"], &[]);
    assert_eq!(waves(&s), [1, 2, 2, 3], "{}", s.json);
    assert_eq!(s.json["rollout"]["waves"], 3, "{}", s.json);
    assert_eq!(s.json["rollout"]["stopped_by_wave"], Value::Null, "{}", s.json);
    assert!(s.stderr.contains("wave 2 of 3: b, c\n"), "{}", s.stderr);
    assert!(s.stderr.contains("rollout: 3 wave(s), all succeeded"), "{}", s.stderr);
    for name in names {
        assert_eq!(generation(name).as_deref(), Some("system-1-link"), "{name}");
    }

    // `c` fails its health check (and rolls back by itself): wave 3 (`d`) never starts.
    let s = env.deploy(1, &file("two", true), &["--rollout", "1,3,100%"], &[]);
    assert_eq!(s.json["success"], false, "{}", s.json);
    for (name, success, gen) in [("a", true, 2), ("b", true, 2), ("c", false, 1)] {
        assert_eq!(s.machine(name)["success"], success, "{name}: {}\n{}", s.json, s.stderr);
        assert_eq!(s.machine(name)["generation"], gen, "{name}: {}", s.json);
    }
    let c = s.machine("c")["detail"].as_str().unwrap();
    assert!(c.contains("health checks failed"), "{c}");
    let d = s.machine("d");
    assert_eq!(d["detail"], "not started: wave 2 stopped the run", "{}", s.json);
    assert_eq!(d["wave"], 3, "{}", s.json);
    assert_eq!(s.json["rollout"]["stopped_by_wave"], 2, "{}", s.json);
    let row = |name: &str| {
        s.stderr.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default()
    };
    assert!(
        row("d").contains("FAILED")
            && row("d").ends_with("wave 3: not started: wave 2 stopped the run"),
        "{}",
        s.stderr
    );
    assert!(row("c").contains("wave 2: "), "{}", s.stderr);
    assert!(
        s.stderr.contains("rollout stopped: wave 2 of 3 failed on c; wave 3 not started"),
        "{}",
        s.stderr
    );
    for (name, gen) in [
        ("a", "system-2-link"),
        ("b", "system-2-link"),
        ("c", "system-1-link"),
        ("d", "system-1-link"),
    ] {
        assert_eq!(generation(name).as_deref(), Some(gen), "{name}");
    }

    // The same with --roll-back-on-failure: `a` and `b` activate generation 3, then return to 2.
    let s = env.deploy(
        1,
        &file("three", true),
        &["--rollout", "1,3,100%", "--roll-back-on-failure"],
        &[],
    );
    assert_eq!(s.json["rollout"]["rolled_back"], serde_json::json!(["a", "b"]), "{}", s.json);
    for name in ["a", "b"] {
        let m = s.machine(name);
        assert_eq!(m["success"], false, "{}", s.json);
        assert_eq!(m["generation"], 2, "{}", s.json);
        let detail = m["detail"].as_str().unwrap();
        assert!(detail.starts_with("activated generation 3, then rolled back"), "{detail}");
        assert_eq!(generation(name).as_deref(), Some("system-2-link"), "{name}");
    }
    assert_eq!(generation("d").as_deref(), Some("system-1-link"));
    assert!(s.stderr.contains("rolled back (--roll-back-on-failure): a, b"), "{}", s.stderr);
}
