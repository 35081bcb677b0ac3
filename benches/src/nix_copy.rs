//! What `nix copy --to ssh://` puts on the wire (column (d) of the issue 7 tables), measured,
//! not assumed: the trees are added to a fresh Nix chroot store, copied with Debian's `nix copy
//! --to ssh://peer?remote-store=DST` (legacy SSH store: the remote runs `nix-store --serve
//! --write`) to the test harness's loopback sshd, and the TCP bytes are counted by a relay
//! between `ssh` and sshd (`NIX_SSHOPTS="-F CONFIG -p RELAY -o HostKeyAlias=…"`). The count is
//! the SSH connection's bytes in each direction: Nix's framing and the NARs, plus SSH's own
//! (key exchange, encryption, MACs; OpenSSH's client compression is off by default).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ferry_tests::nix;
use ferry_tests::sshd::Sshd;

/// One measured `nix copy`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NixCopy {
    /// Bytes from the client to sshd (the NARs go this way).
    pub sent: u64,
    /// Bytes from sshd back to the client.
    pub received: u64,
    /// Sum of the copied paths' NAR sizes (`nix-store -q --size`).
    pub nar_bytes: u64,
    /// Wall time of the `nix copy` process.
    pub seconds: f64,
}

impl NixCopy {
    /// Both directions.
    pub fn wire_bytes(&self) -> u64 {
        self.sent + self.received
    }
}

/// Counts the bytes relayed between clients and `target` until dropped.
struct Relay {
    port: u16,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    pumps: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// Copy `from` into `to` on a thread of its own, adding each chunk to `count`; at the end
/// (EOF or an error on either side) `done` runs with `to` (e.g. to half-close it).
pub fn pump<R: Read + Send + 'static, W: Write + Send + 'static>(
    mut from: R,
    mut to: W,
    count: Arc<AtomicU64>,
    done: impl FnOnce(&mut W) + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
        done(&mut to);
    })
}

/// Half-close a TCP stream (the end of a [`pump`]).
fn half_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

impl Relay {
    fn start(target: u16) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (sent, received) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let pumps: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (s, r, p) = (sent.clone(), received.clone(), pumps.clone());
        // The accept loop lives as long as the process; each bench makes one or two relays.
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
                let mut pumps = p.lock().unwrap_or_else(|e| e.into_inner());
                pumps.push(pump(client, server, s.clone(), half_close));
                pumps.push(pump(s2, c2, r.clone(), half_close));
            }
        });
        Ok(Relay { port, sent, received, pumps })
    }

    /// Wait for the relayed connections to end; (sent, received).
    fn finish(&self) -> (u64, u64) {
        let pumps = std::mem::take(&mut *self.pumps.lock().unwrap_or_else(|e| e.into_inner()));
        for p in pumps {
            let _ = p.join();
        }
        (self.sent.load(Ordering::Relaxed), self.received.load(Ordering::Relaxed))
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Add `trees` to a fresh Nix store under `work` and `nix copy` them over SSH to a fresh store
/// on `sshd`'s side; the bytes that crossed the connection.
pub fn nix_copy_over_ssh(sshd: &Sshd, work: &Path, trees: &[&Path]) -> Result<NixCopy> {
    let (src, dst) = (work.join("nix-src"), work.join("nix-dst"));
    for d in [&src, &dst] {
        if d.exists() {
            // Nix makes store directories read-only.
            run(Command::new("chmod").arg("-R").arg("u+w").arg(d))?;
            std::fs::remove_dir_all(d)?;
        }
    }
    let mut add = nix::command("nix-store");
    add.arg("--store").arg(&src).arg("--add").args(trees);
    let paths: Vec<String> = run(&mut add)?.lines().map(str::to_owned).collect();
    let mut size = nix::command("nix-store");
    size.arg("--store").arg(&src).args(["--query", "--size"]).args(&paths);
    let nar_bytes = run(&mut size)?.lines().map(|l| l.trim().parse::<u64>().unwrap_or(0)).sum();
    let relay = Relay::start(sshd.port())?;
    let opts = format!(
        "-F {} -p {} -o HostKeyAlias=[127.0.0.1]:{}",
        sshd.ssh_config().display(),
        relay.port,
        sshd.port()
    );
    let t = Instant::now();
    run(nix::command("nix")
        .env("NIX_SSHOPTS", opts)
        .args(["copy", "--store"])
        .arg(&src)
        .arg("--to")
        .arg(format!("ssh://peer?remote-store={}", dst.display()))
        .args(&paths))?;
    let seconds = t.elapsed().as_secs_f64();
    let (sent, received) = relay.finish();
    Ok(NixCopy { sent, received, nar_bytes, seconds })
}
