//! Network namespaces made by a test (`ip netns add`), joined by veth pairs and bridges, so
//! that a test can build a small network (a client, a bastion, a host only the bastion reaches;
//! a LAN of hosts behind one shaped uplink) without touching the machine's own: every address
//! lives inside the namespaces the test made, and they are deleted (with their links) when
//! dropped. A link's rate is shaped with `tc tbf` ([`Netns::shape`]; this kernel has no
//! `netem`, so no added latency), and the bytes a device sent are counted by the kernel
//! ([`Netns::tx_bytes`]).
//!
//! Creating namespaces needs root (CI runs as root). [`Netns::unavailable`] says why they
//! cannot be made here, for a test to print a `SKIP` line instead of failing.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace of the test's own, with loopback up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e} (apt-get install -y iproute2)"))
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Netns {
    /// Why namespaces cannot be made here (`None`: they can): tries to make one and delete it.
    pub fn unavailable() -> Option<String> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("ferry-{}-{n}-probe", std::process::id());
        match Command::new("ip").args(["netns", "add", &name]).output() {
            Err(e) => Some(format!("cannot run ip ({e}); apt-get install -y iproute2")),
            Ok(out) if !out.status.success() => Some(format!(
                "`ip netns add` failed (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(_) => {
                let _ = ip(&["netns", "del", &name]);
                None
            }
        }
    }

    /// A new namespace named after `tag` (and this process, so parallel runs do not collide).
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("ferry-{}-{n}-{tag}", std::process::id());
        ip_ok(&["netns", "add", &name]);
        let ns = Netns { name };
        ip_ok(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Its name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Join `a` and `b` with a veth pair, `a_addr` and `b_addr` (`10.x.y.z/24`) on its ends;
    /// the ends' device names (in `a`, in `b`), unique across namespaces.
    pub fn link(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> (String, String) {
        let (va, vb) = Self::veth(a, b);
        for (ns, dev, addr) in [(a, &va, a_addr), (b, &vb, b_addr)] {
            ip_ok(&["-n", &ns.name, "addr", "add", addr, "dev", dev]);
            ip_ok(&["-n", &ns.name, "link", "set", dev, "up"]);
        }
        (va, vb)
    }

    fn veth(a: &Netns, b: &Netns) -> (String, String) {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let (va, vb) = (format!("va{n}"), format!("vb{n}"));
        ip_ok(&[
            "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns",
            &b.name,
        ]);
        (va, vb)
    }

    /// A bridge named `name` in this namespace, up (a LAN switch for [`Netns::attach`]).
    pub fn bridge(&self, name: &str) {
        ip_ok(&["-n", &self.name, "link", "add", name, "type", "bridge"]);
        ip_ok(&["-n", &self.name, "link", "set", name, "up"]);
    }

    /// Plug `host` into the bridge `bridge` of `lan` with a veth pair: `host_addr`
    /// (`10.x.y.z/24`) on the host's end, the other end a port of the bridge. The devices (in
    /// `host`, in `lan`).
    pub fn attach(host: &Netns, host_addr: &str, lan: &Netns, bridge: &str) -> (String, String) {
        let (vh, vl) = Self::veth(host, lan);
        ip_ok(&["-n", &host.name, "addr", "add", host_addr, "dev", &vh]);
        ip_ok(&["-n", &host.name, "link", "set", &vh, "up"]);
        ip_ok(&["-n", &lan.name, "link", "set", &vl, "master", bridge]);
        ip_ok(&["-n", &lan.name, "link", "set", &vl, "up"]);
        (vh, vl)
    }

    /// Limit what `dev` sends to `rate` (`tc` syntax: `20mbit`) with a token bucket (`tbf`).
    pub fn shape(&self, dev: &str, rate: &str) {
        let out = self
            .command("tc")
            .args(["qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate])
            .args(["burst", "64kb", "latency", "200ms"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run tc: {e} (apt-get install -y iproute2)"));
        assert!(out.status.success(), "tc tbf on {dev}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Bytes `dev` has sent (its kernel counter, headers included).
    pub fn tx_bytes(&self, dev: &str) -> u64 {
        let out = self
            .command("cat")
            .arg(format!("/sys/class/net/{dev}/statistics/tx_bytes"))
            .output()
            .expect("run cat in the namespace");
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse().unwrap_or_else(|_| panic!("tx_bytes of {dev}: {text:?}"))
    }

    /// `program` run inside the namespace (`ip netns exec NAME program`); the environment
    /// set on the command passes through.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Whether a TCP connection from inside the namespace to `addr:port` succeeds within 2 s.
    pub fn can_connect(&self, addr: &str, port: u16) -> bool {
        self.command("timeout")
            .args(["2", "bash", "-c", &format!("exec 3<>/dev/tcp/{addr}/{port}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
