//! `nix_host_bench`: the generation update of the delta corpus (issue 15) built by Nix into a
//! chroot store (`benches/nix/gen_update.nix`: the same three packages and references as
//! `gen_update`, and a system with `bin/switch-to-configuration`), then, over one emulated
//! link, side by side in one run:
//! - `ferry deploy` of generation 2 (`store = "nix"` on both ends) to a host whose store is a
//!   Nix chroot store holding generation 1 (the agent streams into `nix-store --serve --write`,
//!   deltas against the host's Nix paths);
//! - `nix copy --to ssh://…?remote-store=ROOT` of generation 2 to another Nix chroot store
//!   holding generation 1.
//!
//! Both hosts are the test harness's loopback sshd. Generation 1 goes to each unshaped and
//! untimed. The link is `ferry bench --link kernel`'s (this kernel has no netem): a private
//! network namespace (`unshare -n`) whose `lo` is shaped by `tc … tbf` (MTU 1500) and a
//! [`transfer::relay::Relay`] adding the one-way latency on the way to a Unix socket, relayed
//! outside to sshd by a counting pump. Each tool runs in its own namespace; wire bytes are the
//! SSH connections' bytes in both directions as the pump relayed them (SSH's framing, key
//! exchange and MACs included; TCP/IP headers and the retransmissions tbf's drops cause are
//! not), time is the command's wall time.

use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferry_benches::nix_copy::pump;
use ferry_tests::sshd::{remote_path, Sshd, SshdOptions};

const EXPR: &str = include_str!("../../nix/gen_update.nix");

#[derive(Debug, Parser)]
#[command(
    name = "nix_host_bench",
    about = "ferry deploy into a host's Nix store against nix copy --to ssh://, same link"
)]
struct Args {
    /// Work directory (the Nix stores, the hosts).
    #[arg(long, default_value = "/tmp/nixbench")]
    work: PathBuf,
    /// Corpus directory (debian-pairs.sh output).
    #[arg(long, default_value = "/tmp/delta-corpus")]
    corpus: PathBuf,
    /// The ferry binary (also the hosts' agent).
    #[arg(long, default_value = "target/x86_64-unknown-linux-gnu/release/ferry")]
    ferry: PathBuf,
    /// Link rate, bits per second.
    #[arg(long, default_value_t = 20_000_000)]
    rate: u64,
    /// One-way latency, milliseconds.
    #[arg(long, default_value_t = 40)]
    latency_ms: u64,
    /// Internal: run one measured tool inside the namespace (sshd's Unix socket, state file,
    /// `ferry` or `nix`).
    #[arg(long, hide = true, num_args = 3)]
    inside: Vec<PathBuf>,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned()
}

/// Build generation `g` into the coordinator's chroot store; its system path.
fn build(a: &Args, g: u32) -> Result<String> {
    let expr = a.work.join("gen_update.nix");
    std::fs::write(&expr, EXPR)?;
    let mut c = ferry_tests::nix::command("nix-build");
    c.env(
        "NIX_CONFIG",
        format!("sandbox = true\nsandbox-paths = /bin /lib /lib64 /usr {}\n", a.corpus.display()),
    );
    c.arg("--store").arg(a.work.join("coord")).arg("--no-out-link");
    c.args(["--argstr", "gen", &g.to_string(), "--argstr", "corpus"]).arg(&a.corpus).arg(&expr);
    run(&mut c)
}

/// The measured part's inputs, written by the outer process for the inner one.
#[derive(Debug)]
struct State {
    ferry: PathBuf,
    coord: PathBuf,
    ferry_host: PathBuf,
    nix_host: PathBuf,
    ssh_config: PathBuf,
    user: String,
    identity: PathBuf,
    host_key: String,
    sshd_port: u16,
    gen2: String,
    rate: u64,
    latency_ms: u64,
}

impl State {
    fn lines(&self) -> String {
        [
            self.ferry.display().to_string(),
            self.coord.display().to_string(),
            self.ferry_host.display().to_string(),
            self.nix_host.display().to_string(),
            self.ssh_config.display().to_string(),
            self.user.clone(),
            self.identity.display().to_string(),
            self.host_key.clone(),
            self.sshd_port.to_string(),
            self.gen2.clone(),
            self.rate.to_string(),
            self.latency_ms.to_string(),
        ]
        .join("\n")
    }

    fn parse(text: &str) -> Result<State> {
        let l: Vec<&str> = text.lines().collect();
        let [ferry, coord, fh, nh, cfg, user, id, key, port, gen2, rate, lat] = l[..] else {
            bail!("bad state file")
        };
        Ok(State {
            ferry: ferry.into(),
            coord: coord.into(),
            ferry_host: fh.into(),
            nix_host: nh.into(),
            ssh_config: cfg.into(),
            user: user.into(),
            identity: id.into(),
            host_key: key.into(),
            sshd_port: port.parse()?,
            gen2: gen2.into(),
            rate: rate.parse()?,
            latency_ms: lat.parse()?,
        })
    }

    /// The deployment of `system` to the ferry host at `port`.
    fn deployment(&self, system: &str, port: u16) -> String {
        format!(
            "store = \"nix\"\n[operating-system.sys]\nsystem = \"{system}\"\n\
             switch = [\"bin/switch-to-configuration\", \"switch\"]\n\
             [[machine]]\nname = \"h\"\noperating-system = \"sys\"\n\
             [machine.configuration]\nhost-name = \"127.0.0.1\"\nport = {port}\nuser = \"{}\"\n\
             identity = \"{}\"\nhost-key = \"{}\"\nroot = \"{}\"\nstore = \"nix\"\n\
             agent = \"PATH\"\n",
            self.user,
            self.identity.display(),
            self.host_key,
            self.ferry_host.display()
        )
    }

    fn deploy(&self, system: &str, port: u16, file: &Path) -> Result<String> {
        std::fs::write(file, self.deployment(system, port))?;
        run(Command::new(&self.ferry)
            .arg("--root")
            .arg(&self.coord)
            .arg("deploy")
            .arg(file)
            .arg("--json")
            .envs(ferry_tests::nix::remote_env()))
    }

    fn nix_copy(&self, system: &str, port: u16) -> Result<String> {
        let opts = format!(
            "-F {} -p {port} -o HostKeyAlias=[127.0.0.1]:{}",
            self.ssh_config.display(),
            self.sshd_port
        );
        run(ferry_tests::nix::command("nix")
            .env("NIX_SSHOPTS", opts)
            .args(["copy", "--store"])
            .arg(&self.coord)
            .arg("--to")
            .arg(format!("ssh://peer?remote-store={}", self.nix_host.display()))
            .arg(system))
    }
}

/// Inside the namespace: shape `lo`, relay to sshd's socket with the latency, run `tool`;
/// prints its wall time.
fn inside(sock: &Path, state: &Path, tool: &str) -> Result<()> {
    let s = State::parse(&std::fs::read_to_string(state)?)?;
    run(Command::new("ip").args(["link", "set", "lo", "up"]))?;
    run(Command::new("ip").args(["link", "set", "lo", "mtu", "1500"]))?;
    let relay = transfer::relay::Relay::new(Duration::ZERO)?;
    let addr = relay.tcp_to_unix("127.0.0.1:0".parse()?, sock.to_owned())?;
    // The link of `ferry bench --link kernel`: tbf for the rate, the relay for the delay.
    let tbf = transfer::shaping::Qdisc::Tbf.tc_args(s.rate as f64 / 8.0, Duration::ZERO);
    run(Command::new("tc").args(["qdisc", "add", "dev", "lo", "root"]).args(&tbf))?;
    relay.set_latency(Duration::from_millis(s.latency_ms));
    let t = Instant::now();
    let out = match tool {
        "ferry" => s.deploy(&s.gen2, addr.port(), &state.with_extension("toml"))?,
        _ => s.nix_copy(&s.gen2, addr.port())?,
    };
    println!("{}", t.elapsed().as_secs_f64());
    eprintln!("{tool}: {out}");
    Ok(())
}

/// Relays each connection to `sock` to sshd's TCP port, counting the bytes each way.
struct Pump {
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
}

impl Pump {
    fn start(sock: &Path, port: u16) -> Result<Pump> {
        let listener = UnixListener::bind(sock)?;
        let (up, down, open) = Default::default();
        let counts = Pump { up, down, open };
        let (u, d, o) = (counts.up.clone(), counts.down.clone(), counts.open.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)) else { continue };
                o.fetch_add(2, Ordering::SeqCst);
                let (c2, t2) = (conn.try_clone().unwrap(), tcp.try_clone().unwrap());
                let o1 = o.clone();
                pump(conn, tcp, u.clone(), move |t: &mut TcpStream| {
                    let _ = t.shutdown(Shutdown::Write);
                    o1.fetch_sub(1, Ordering::SeqCst);
                });
                let o2 = o.clone();
                pump(t2, c2, d.clone(), move |c: &mut std::os::unix::net::UnixStream| {
                    let _ = c.shutdown(Shutdown::Write);
                    o2.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(counts)
    }

    /// Bytes relayed (up, down) once every connection closed, then reset.
    fn take(&self) -> (u64, u64) {
        while self.open.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        (self.up.swap(0, Ordering::SeqCst), self.down.swap(0, Ordering::SeqCst))
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    if let [sock, state, tool] = &a.inside[..] {
        return inside(sock, state, &tool.to_string_lossy());
    }
    std::fs::create_dir_all(&a.work)?;
    let (gen1, gen2) = (build(&a, 1)?, build(&a, 2)?);
    eprintln!("generation 1: {gen1}\ngeneration 2: {gen2}");
    let ferry = std::fs::canonicalize(&a.ferry)?;
    let sshd = Sshd::start_with(SshdOptions {
        path: Some(remote_path(&[ferry.parent().context("ferry's directory")?])),
        ..SshdOptions::default()
    });
    let (ferry_host, nix_host) = (sshd.dir().join("ferry-host"), sshd.dir().join("nix-host"));
    for h in [&ferry_host, &nix_host] {
        ferry_tests::nix::store(h, &["--init"]);
    }
    let state = State {
        ferry,
        coord: a.work.join("coord"),
        ferry_host,
        nix_host,
        ssh_config: sshd.ssh_config().to_owned(),
        user: sshd.user().to_owned(),
        identity: sshd.identity_ed25519().to_owned(),
        host_key: sshd.host_key().to_owned(),
        sshd_port: sshd.port(),
        gen2,
        rate: a.rate,
        latency_ms: a.latency_ms,
    };
    // Generation 1 on both hosts, unshaped and untimed.
    let file = sshd.dir().join("gen1.toml");
    state.deploy(&gen1, sshd.port(), &file).context("deploying generation 1")?;
    state.nix_copy(&gen1, sshd.port()).context("nix copy of generation 1")?;
    let state_file = sshd.dir().join("state");
    std::fs::write(&state_file, state.lines())?;
    let sock = sshd.dir().join("sshd.sock");
    let pump = Pump::start(&sock, sshd.port())?;
    let me = std::env::current_exe()?;
    println!(
        "{} Mbit/s, {} ms one way (tbf + relay); generation 2 of the delta corpus\n",
        a.rate / 1_000_000,
        a.latency_ms
    );
    println!("| tool | bytes sent | bytes received | wire bytes | time s | load before → after |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut rows = Vec::new();
    for (tool, name) in
        [("ferry", "ferry deploy (store = \"nix\")"), ("nix", "nix copy --to ssh://")]
    {
        let load = loadavg();
        let out = Command::new("unshare")
            .arg("-n")
            .arg(&me)
            .arg("--inside")
            .arg(&sock)
            .arg(&state_file)
            .arg(tool)
            .output()
            .context("running unshare -n")?;
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            bail!("{name} failed ({})", out.status);
        }
        let seconds: f64 = String::from_utf8(out.stdout)?.trim().parse()?;
        let (up, down) = pump.take();
        println!(
            "| {name} | {up} | {down} | {} | {seconds:.1} | {load} → {} |",
            up + down,
            loadavg()
        );
        rows.push(((up + down) as f64, seconds));
    }
    let (f, n) = (rows[0], rows[1]);
    println!("\nferry / nix copy: wire bytes {:.3}x, time {:.3}x", f.0 / n.0, f.1 / n.1);
    Ok(())
}
