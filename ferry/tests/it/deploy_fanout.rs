//! `ferry deploy` through relays on real sshd hosts (loopback): `--fan-out 2` over four hosts
//! makes one tree (`a` feeds `b` and `c`, `b` feeds `d`); every host verifies what it gets,
//! the hosts below `a` get nothing from the coordinator, each result says how its copy went.
//! Then `via`, with a relay whose identity its child does not accept: that child is copied
//! directly, and the run says so.

use std::fs;
use std::io::Write;

use ferry_tests::sshd::Fleet;

use crate::deploy_ssh::{current, fleet, machine, root, Env, BASE};

/// Each host's own key (its `relay-identity`) is authorized on every other host, as an
/// operator authorizes a relay's key on its children.
pub(crate) fn authorize_relays(fleet: &Fleet) {
    let keys: String = fleet
        .iter()
        .map(|h| fs::read_to_string(h.identity_ed25519().with_extension("pub")).unwrap())
        .collect();
    for h in fleet.iter() {
        let mut f =
            fs::OpenOptions::new().append(true).open(h.dir().join("authorized_keys")).unwrap();
        f.write_all(keys.as_bytes()).unwrap();
    }
}

#[test]
fn fan_out_copies_through_relays_and_falls_back_to_direct_copies() {
    let env = Env::new();
    let fleet = fleet(4);
    let names = ["a", "b", "c", "d"];
    authorize_relays(&fleet);
    // `relay(name)`: the machine's `via` and `relay-identity` lines.
    let file = |motd: &str, relay: &dyn Fn(&str, &str) -> String| {
        let mut text = BASE.replace("MOTD", motd);
        for (name, sshd) in names.iter().zip(fleet.iter()) {
            let key = sshd.identity_ed25519().display().to_string();
            let extra = format!("confirm-timeout = 20\n{}", relay(name, &key));
            text.push_str(&machine(name, sshd, "\"base\"", &extra));
        }
        env.write("fleet.toml", &text)
    };
    let identity = |_: &str, key: &str| format!("relay-identity = \"{key}\"\n");
    let s = env.deploy(0, &file("one", &identity), &["--fan-out", "2"], &[]);
    let detail = |n: &str| s.machine(n)["detail"].as_str().unwrap().to_owned();
    assert!(detail("a").contains("relayed to b, d, c"), "{}\n{}", s.json, s.stderr);
    for (n, relay) in [("b", "a"), ("c", "a"), ("d", "b")] {
        let m = s.machine(n);
        assert_eq!(m["success"], true, "{}\n{}", s.json, s.stderr);
        assert!(detail(n).contains(&format!("copied through relay {relay}")), "{}", detail(n));
        // Nothing left for the coordinator to send.
        assert_eq!(m["paths_sent"], 0, "{n}: {}", s.json);
    }
    for sshd in fleet.iter() {
        let r = root(sshd);
        assert_eq!(current(&r).as_deref(), Some("system-1-link"));
        assert_eq!(fs::read_to_string(r.join("etc/motd")).unwrap(), "one");
        env.expect(0, &["--root", r.to_str().unwrap(), "store", "verify", "--check-contents"]);
    }

    // `via`: `b` and `d` through `a`, `c` through `b`, whose relay key `c` does not accept.
    let via = |n: &str, key: &str| match n {
        "b" => "via = \"a\"\nrelay-identity = \"/nonexistent/relay-key\"\n".to_owned(),
        "c" => format!("via = \"b\"\nrelay-identity = \"{key}\"\n"),
        "d" => format!("via = \"a\"\nrelay-identity = \"{key}\"\n"),
        _ => format!("relay-identity = \"{key}\"\n"),
    };
    let s = env.deploy(0, &file("two", &via), &[], &[]);
    let detail = |n: &str| s.machine(n)["detail"].as_str().unwrap().to_owned();
    for n in names {
        assert_eq!(s.machine(n)["success"], true, "{n}: {}\n{}", s.json, s.stderr);
    }
    assert!(detail("b").contains("copied through relay a"), "{}", detail("b"));
    assert!(detail("d").contains("copied through relay a"), "{}", detail("d"));
    let c = detail("c");
    assert!(c.contains("relay b: ") && c.ends_with("; copied directly"), "{c}");
    assert!(s.machine("c")["paths_sent"].as_u64().unwrap() > 0, "{}", s.json);
    for sshd in fleet.iter() {
        let r = root(sshd);
        assert_eq!(current(&r).as_deref(), Some("system-2-link"));
        assert_eq!(fs::read_to_string(r.join("etc/motd")).unwrap(), "two");
    }
}

/// A relay-only host (`[relay.gw]`, not deployed): the machines with `via = "gw"` get their
/// copies through it; it keeps nothing.
#[test]
fn a_relay_only_host_feeds_the_machines_behind_it() {
    let env = Env::new();
    let fleet = fleet(3);
    authorize_relays(&fleet);
    let gw = &fleet.hosts[0];
    let mut text = BASE.replace("MOTD", "one");
    text.push_str(&format!(
        "[relay.gw]\nhost-name = \"{}\"\nport = {}\nuser = \"{}\"\nidentity = \"{}\"\n\
         host-key = \"{}\"\nroot = \"{}\"\nrelay-identity = \"{}\"\n",
        gw.host(),
        gw.port(),
        gw.user(),
        gw.identity_ed25519().display(),
        gw.host_key(),
        root(gw).display(),
        gw.identity_ed25519().display()
    ));
    for (name, sshd) in ["x", "y"].iter().zip(&fleet.hosts[1..]) {
        text.push_str(&machine(name, sshd, "\"base\"", "confirm-timeout = 20\nvia = \"gw\""));
    }
    let file = env.write("fleet.toml", &text);
    let s = env.deploy(0, &file, &[], &[]);
    for (n, sshd) in ["x", "y"].iter().zip(&fleet.hosts[1..]) {
        let m = s.machine(n);
        assert_eq!(m["success"], true, "{}\n{}", s.json, s.stderr);
        let detail = m["detail"].as_str().unwrap();
        assert!(detail.contains("copied through relay gw"), "{detail}");
        assert_eq!(m["paths_sent"], 0, "{}", s.json);
        assert_eq!(current(&root(sshd)).as_deref(), Some("system-1-link"));
    }
    // The relay kept nothing.
    let kept = ferry_tests::store_paths(crate::util::FERRY, &root(gw));
    assert!(kept.is_empty(), "{kept:?}");
}
