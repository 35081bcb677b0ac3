//! The SSH transport (`transfer::transport::ssh`) against Debian's OpenSSH server on loopback.
//!
//! `FERRY_SSH_THROUGHPUT_MIB` sets the size of the throughput run: 1024 MiB by default in an
//! optimized build (`cargo test --release -p ferry-tests --test ssh throughput -- --nocapture`),
//! 256 MiB in a debug build, where russh's packet handling runs unoptimized.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_tests::sshd::{remote_path, KeyKind, Sshd, SshdOptions};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transfer::transport::ssh::{Keepalive, SshConfig, SshError, SshSession, UploadMethod};

fn config(sshd: &Sshd) -> SshConfig {
    let mut cfg = SshConfig::new(sshd.host());
    cfg.port = sshd.port();
    cfg.user = sshd.user().to_owned();
    cfg.identity = Some(sshd.identity(KeyKind::Ed25519));
    cfg.known_hosts = Some(sshd.known_hosts());
    cfg.use_agent = false;
    cfg
}

async fn connect(sshd: &Sshd) -> SshSession {
    SshSession::connect(&config(sshd))
        .await
        .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", sshd.log()))
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_with_each_user_key_kind() {
    let sshd = Sshd::start();
    for kind in KeyKind::ALL {
        let mut cfg = config(&sshd);
        cfg.identity = Some(sshd.identity(kind));
        let session = SshSession::connect(&cfg).await.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(text(session.run(&["echo", "hello"]).await.unwrap()), "hello\n", "{kind:?}");
        session.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_host_keys_of_each_kind_are_accepted() {
    let sshd = Sshd::start_with(SshdOptions {
        host_keys: vec![KeyKind::Ed25519, KeyKind::Rsa, KeyKind::Ecdsa],
        ..SshdOptions::default()
    });
    for kind in KeyKind::ALL {
        let mut cfg = config(&sshd);
        cfg.known_hosts = Some(sshd.dir().join("no-such-known-hosts"));
        cfg.host_key = Some(sshd.host_key_of(kind).unwrap().to_owned());
        let session = SshSession::connect(&cfg).await.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(session.remote_arch().await.unwrap(), std::env::consts::ARCH);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pinned_key_shows_both_keys() {
    let sshd = Sshd::start();
    // A real key, but not the host's: the user's own public key.
    let wrong =
        std::fs::read_to_string(sshd.identity(KeyKind::Ed25519).with_extension("pub")).unwrap();
    let wrong: String = wrong.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let mut cfg = config(&sshd);
    cfg.host_key = Some(wrong.clone());
    let err = SshSession::connect(&cfg).await.unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{msg}");
    assert!(msg.contains(&wrong), "expected key missing: {msg}");
    assert!(msg.contains(sshd.host_key()), "offered key missing: {msg}");
    assert!(msg.contains(&format!("127.0.0.1:{}", sshd.port())), "{msg}");
    assert!(msg.contains(&format!("ssh-keyscan -p {} 127.0.0.1", sshd.port())), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_refused_with_the_keyscan_line() {
    let sshd = Sshd::start();
    let empty = sshd.dir().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let mut cfg = config(&sshd);
    cfg.known_hosts = Some(empty.clone());
    let err = SshSession::connect(&cfg).await.unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, SshError::HostKeyUnknown { .. }), "{msg}");
    assert!(msg.contains(sshd.host_key()), "{msg}");
    assert!(
        msg.contains(&format!("ssh-keyscan -p {} 127.0.0.1 >> {}", sshd.port(), empty.display())),
        "{msg}"
    );

    // The printed command really records the key, and then the host is accepted.
    let scan = Command::new("ssh-keyscan")
        .args(["-p", &sshd.port().to_string(), "127.0.0.1"])
        .output()
        .expect("ssh-keyscan (apt-get install -y openssh-client)");
    std::fs::write(&empty, &scan.stdout).unwrap();
    SshSession::connect(&cfg).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_key_in_known_hosts_and_hashed_entries() {
    let sshd = Sshd::start();
    let other = Sshd::start();
    // known_hosts that records the other server's key under this server's name.
    let stale = sshd.dir().join("stale_known_hosts");
    std::fs::write(&stale, format!("# old\n[127.0.0.1]:{} {}\n", sshd.port(), other.host_key()))
        .unwrap();
    let mut cfg = config(&sshd);
    cfg.known_hosts = Some(stale.clone());
    let err = SshSession::connect(&cfg).await.unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{msg}");
    assert!(msg.contains(other.host_key()) && msg.contains(sshd.host_key()), "{msg}");
    assert!(msg.contains(&format!("{} line 2", stale.display())), "{msg}");

    // OpenSSH-hashed known_hosts (ssh-keygen -H) is understood.
    let hashed = sshd.dir().join("hashed_known_hosts");
    std::fs::copy(sshd.known_hosts(), &hashed).unwrap();
    let out = Command::new("ssh-keygen").arg("-H").arg("-f").arg(&hashed).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(&hashed).unwrap().starts_with("|1|"));
    cfg.known_hosts = Some(hashed);
    SshSession::connect(&cfg).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_key_is_an_auth_error() {
    let sshd = Sshd::start();
    let stranger = sshd.dir().join("stranger");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut cfg = config(&sshd);
    cfg.identity = Some(stranger.clone());
    let err = SshSession::connect(&cfg).await.unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, SshError::Auth { .. }), "{msg}");
    assert!(msg.contains(&stranger.display().to_string()) && msg.contains(sshd.user()), "{msg}");

    cfg.identity = Some(sshd.dir().join("missing_key"));
    let err = SshSession::connect(&cfg).await.unwrap_err();
    assert!(matches!(err, SshError::Identity { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_quotes_arguments_and_reports_exit_codes() {
    let sshd = Sshd::start();
    let session = connect(&sshd).await;
    let args = ["a b", "it's", "$HOME", "*", "", "x\ny", "\"q\"", "; rm -rf /tmp/nothing"];
    let mut argv = vec!["printf", "<%s>\\n"];
    argv.extend(args);
    let out = text(session.run(&argv).await.unwrap());
    let expected: String = args.iter().map(|a| format!("<{a}>\n")).collect();
    assert_eq!(out, expected);

    let process = session.exec(&["sh", "-c", "echo out; echo err >&2; exit 3"]).await.unwrap();
    let (_stdin, mut stdout, exit) = process.split();
    let mut out = String::new();
    stdout.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "out\n");
    let stderr_probe = exit.stderr();
    let status = exit.wait().await.unwrap();
    assert_eq!(status.code, Some(3));
    assert!(!status.success());
    let _ = stderr_probe;

    let err = session.run(&["sh", "-c", "echo broken >&2; exit 7"]).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SshError::CommandFailed { .. }), "{msg}");
    assert!(msg.contains("exit status 7") && msg.contains("broken"), "{msg}");

    let status =
        session.exec(&["sh", "-c", "kill -TERM $$"]).await.unwrap().exit.wait().await.unwrap();
    assert_eq!(status.code, None);
    assert!(status.signal.is_some(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_stream_round_trip_through_cat() {
    const MIB: usize = 1 << 20;
    const TOTAL: usize = 256 * MIB;
    let sshd = Sshd::start();
    let session = connect(&sshd).await;
    let (mut stdin, mut stdout, exit) = session.exec(&["cat"]).await.unwrap().split();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        for i in 0..(TOTAL / MIB) {
            let chunk = ferry_tests::pseudo_random(i as u64 + 1, MIB);
            hash.update(&chunk);
            stdin.write_all(&chunk).await.unwrap();
        }
        stdin.shutdown().await.unwrap();
        hash.finalize()
    });
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0;
    loop {
        let n = stdout.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        got += n;
    }
    let sent = writer.await.unwrap();
    assert!(exit.wait().await.unwrap().success());
    assert_eq!(got, TOTAL);
    assert_eq!(hash.finalize(), sent);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "round trip through cat: {} MiB each way in {secs:.2} s ({:.0} MB/s each way)",
        TOTAL / MIB,
        TOTAL as f64 / secs / 1e6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_into_cat_dev_null() {
    let mib: usize = std::env::var("FERRY_SSH_THROUGHPUT_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 256 } else { 1024 });
    let sshd = Sshd::start();
    let session = connect(&sshd).await;
    let (mut stdin, _stdout, exit) =
        session.exec(&["sh", "-c", "cat > /dev/null"]).await.unwrap().split();
    let chunk = ferry_tests::pseudo_random(42, 1 << 20);
    let start = Instant::now();
    for _ in 0..mib {
        stdin.write_all(&chunk).await.unwrap();
    }
    stdin.shutdown().await.unwrap();
    assert!(exit.wait().await.unwrap().success());
    let secs = start.elapsed().as_secs_f64();
    println!(
        "throughput: {mib} MiB through `cat > /dev/null` in {secs:.2} s = {:.0} MB/s",
        (mib << 20) as f64 / secs / 1e6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_channels_share_one_session() {
    let sshd = Sshd::start();
    let session = Arc::new(connect(&sshd).await);
    let mut tasks = Vec::new();
    for i in 0..24u64 {
        let session = session.clone();
        tasks.push(tokio::spawn(async move {
            let data = ferry_tests::pseudo_random(i + 100, 3 << 20);
            let (mut stdin, mut stdout, exit) = session.exec(&["sha256sum"]).await.unwrap().split();
            let writer = tokio::spawn(async move {
                stdin.write_all(&data).await.unwrap();
                stdin.shutdown().await.unwrap();
                data
            });
            let mut out = String::new();
            stdout.read_to_string(&mut out).await.unwrap();
            let data = writer.await.unwrap();
            assert!(exit.wait().await.unwrap().success());
            let expected: String =
                Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(out.split_whitespace().next(), Some(expected.as_str()), "channel {i}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Only one TCP connection was made for all of them.
    let log = sshd.log();
    assert_eq!(log.matches("Accepted publickey").count(), 1, "{log}");
}

fn sha256_file(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_over_sftp() {
    let sshd = Sshd::start();
    let session = connect(&sshd).await;
    let local = sshd.dir().join("local.bin");
    std::fs::write(&local, ferry_tests::pseudo_random(7, (5 << 20) + 123)).unwrap();
    let remote = sshd.dir().join("cache/ferry/ferry-0.1.0");
    let how = session.upload(&local, remote.to_str().unwrap(), 0o755).await.unwrap();
    assert_eq!(how, UploadMethod::Sftp);
    assert_eq!(sha256_file(&remote), sha256_file(&local));
    assert_eq!(mode_of(&remote), 0o755);
    // Replacing an existing file works, and leaves no temp file behind.
    std::fs::write(&local, b"second version").unwrap();
    session.upload(&local, remote.to_str().unwrap(), 0o700).await.unwrap();
    assert_eq!(std::fs::read(&remote).unwrap(), b"second version");
    assert_eq!(mode_of(&remote), 0o700);
    assert_eq!(std::fs::read_dir(remote.parent().unwrap()).unwrap().count(), 1);
    // The uploaded executable runs on the host.
    let script = sshd.dir().join("hello.sh");
    std::fs::write(&script, "#!/bin/sh\necho \"hi $1\"\n").unwrap();
    let remote_script = sshd.dir().join("bin dir/hello");
    session.upload(&script, remote_script.to_str().unwrap(), 0o755).await.unwrap();
    let out = session.run(&[remote_script.to_str().unwrap(), "there"]).await.unwrap();
    assert_eq!(text(out), "hi there\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_over_exec_without_sftp_subsystem() {
    let sshd = Sshd::start_with(SshdOptions::without_sftp());
    let session = connect(&sshd).await;
    let local = sshd.dir().join("local.bin");
    std::fs::write(&local, ferry_tests::pseudo_random(9, (3 << 20) + 5)).unwrap();
    let remote = sshd.dir().join("nested dir/it's here");
    let how = session.upload(&local, remote.to_str().unwrap(), 0o755).await.unwrap();
    assert_eq!(how, UploadMethod::Exec);
    assert_eq!(sha256_file(&remote), sha256_file(&local));
    assert_eq!(mode_of(&remote), 0o755);
    assert_eq!(std::fs::read_dir(remote.parent().unwrap()).unwrap().count(), 1);
    let err = session.upload(&sshd.dir().join("absent"), "/tmp/x", 0o644).await.unwrap_err();
    assert!(matches!(err, SshError::Upload { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_path_option_reaches_commands() {
    let bin = tempfile::tempdir().unwrap();
    let tool = bin.path().join("ferry-probe");
    std::fs::write(&tool, "#!/bin/sh\necho probe-ok\n").unwrap();
    Command::new("chmod").arg("755").arg(&tool).status().unwrap();
    let sshd = Sshd::start_with(SshdOptions {
        path: Some(remote_path(&[bin.path()])),
        ..SshdOptions::default()
    });
    let session = connect(&sshd).await;
    assert_eq!(text(session.run(&["ferry-probe"]).await.unwrap()), "probe-ok\n");
    // Sessions run with the fixture's own HOME, not the user's (no ~/.bashrc of the machine).
    let home = session.run(&["sh", "-c", "echo $HOME"]).await.unwrap();
    assert_eq!(text(home).trim(), sshd.home().to_str().unwrap());

    // A SetEnv line of the caller's own is merged (sshd honours only the first SetEnv).
    let elsewhere = tempfile::tempdir().unwrap();
    let sshd = Sshd::start_with(SshdOptions {
        path: Some(remote_path(&[bin.path()])),
        extra_config: vec![format!("SetEnv HOME={} FERRY_X=1", elsewhere.path().display())],
        ..SshdOptions::default()
    });
    assert_eq!(sshd.home(), elsewhere.path());
    let session = connect(&sshd).await;
    let out = session.run(&["sh", "-c", "echo $HOME $FERRY_X; ferry-probe"]).await.unwrap();
    assert_eq!(text(out), format!("{} 1\nprobe-ok\n", elsewhere.path().display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_fails_fast() {
    let port = ferry_tests::sshd::free_port();
    let mut cfg = SshConfig::new("127.0.0.1");
    cfg.port = port;
    cfg.use_agent = false;
    let start = Instant::now();
    let err = SshSession::connect(&cfg).await.unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    assert!(matches!(err, SshError::Connect { .. }), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}: connect")), "{msg}");

    // A port that accepts but never speaks SSH: the connect timeout ends it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    cfg.port = listener.local_addr().unwrap().port();
    cfg.connect_timeout = Duration::from_millis(800);
    let start = Instant::now();
    let err = SshSession::connect(&cfg).await.unwrap_err();
    println!("{err}");
    assert!(matches!(err, SshError::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sshd_mid_stream_errors_without_hanging() {
    for whole_server in [false, true] {
        let mut sshd = Sshd::start();
        let session = connect(&sshd).await;
        let (mut stdin, mut stdout, exit) = session.exec(&["cat"]).await.unwrap().split();
        let writer = tokio::spawn(async move {
            let chunk = ferry_tests::pseudo_random(3, 1 << 20);
            for _ in 0..4096 {
                if stdin.write_all(&chunk).await.is_err() {
                    return true;
                }
            }
            false
        });
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0usize;
        while got < (16 << 20) {
            got += stdout.read(&mut buf).await.unwrap();
        }
        if whole_server {
            sshd.kill();
        } else {
            sshd.kill_connections();
        }
        let outcome = tokio::time::timeout(Duration::from_secs(20), async {
            // Reads end (EOF or error), the writer fails, and the exit reports the loss.
            loop {
                match stdout.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let write_failed = writer.await.unwrap();
            let exit = exit.wait().await;
            (write_failed, exit)
        })
        .await
        .expect("hung after the server was killed");
        assert!(outcome.0, "the writer did not see the connection drop");
        let err = outcome.1.unwrap_err();
        println!("{err}");
        assert!(matches!(err, SshError::ConnectionLost { .. }), "{err}");
        assert!(session.is_closed() || whole_server || !session.is_closed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_detected_by_keepalive() {
    let sshd = Sshd::start();
    let mut cfg = config(&sshd);
    cfg.keepalive = Some(Keepalive { interval: Duration::from_millis(500), max_missed: 2 });
    let session = SshSession::connect(&cfg).await.unwrap();
    let (mut stdin, mut stdout, exit) = session.exec(&["cat"]).await.unwrap().split();
    stdin.write_all(b"ping\n").await.unwrap();
    let mut line = [0u8; 5];
    stdout.read_exact(&mut line).await.unwrap();
    // The host goes silent: TCP stays up, nothing answers.
    sshd.freeze_connections();
    let start = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 64];
        let read = stdout.read(&mut buf).await;
        (read, exit.wait().await)
    })
    .await
    .expect("a silent host hung the client: keepalive did not fire");
    println!("dead connection noticed after {:?}: {:?}", start.elapsed(), outcome.1);
    assert!(matches!(outcome.0, Ok(0) | Err(_)));
    assert!(matches!(outcome.1, Err(SshError::ConnectionLost { .. })), "{:?}", outcome.1);
    assert!(stdin.write_all(b"more").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_of_hosts_each_with_its_own_key_and_home() {
    let fleet = ferry_tests::sshd::Fleet::start(3);
    let mut ports = std::collections::BTreeSet::new();
    let mut keys = std::collections::BTreeSet::new();
    for host in fleet.iter() {
        ports.insert(host.port());
        keys.insert(host.host_key().to_owned());
        let mut cfg = config(host);
        cfg.known_hosts = None;
        cfg.host_key = Some(host.host_key().to_owned());
        let session = SshSession::connect(&cfg).await.unwrap();
        let home = session.run(&["sh", "-c", "echo $HOME"]).await.unwrap();
        assert_eq!(text(home).trim(), host.home().to_str().unwrap());
    }
    assert_eq!((ports.len(), keys.len()), (3, 3));
    // Another host's key is refused: keys are per host.
    let mut cfg = config(&fleet.hosts[0]);
    cfg.host_key = Some(fleet.hosts[1].host_key().to_owned());
    assert!(matches!(SshSession::connect(&cfg).await, Err(SshError::HostKeyMismatch { .. })));
}
