//! SSH as users configure it: `ferry copy` run inside a network namespace of the test's own (the
//! client), reaching a host that only a bastion can reach (two sshd in namespaces of their
//! own, joined by veth pairs with addresses in 10.213.0.0/16 inside those namespaces), through
//! `ProxyJump` in `~/.ssh/config` of a temp HOME or a file given with `--ssh-config`; a wrong
//! bastion host key is refused with both keys shown.
//!
//! Needs root for `ip netns add` (CI runs as root); elsewhere the tests print a SKIP line.

use std::path::{Path, PathBuf};
use std::process::Output;

use ferry_tests::netns::Netns;
use ferry_tests::sshd::{remote_path, Sshd, SshdOptions};

use crate::util::FERRY;

/// client ↔ bastion ↔ target; the client has no route to the target.
struct Net {
    // Dropped before the namespaces (field order): the servers run inside them.
    bastion: Sshd,
    target: Sshd,
    client: Netns,
    _namespaces: Vec<Netns>,
}

fn net() -> Option<Net> {
    if let Some(why) = Netns::unavailable() {
        eprintln!("SKIP: network namespaces cannot be made here: {why}");
        return None;
    }
    let client = Netns::new("client");
    let bastion_ns = Netns::new("bastion");
    let target_ns = Netns::new("target");
    Netns::link(&client, "10.213.1.1/24", &bastion_ns, "10.213.1.2/24");
    Netns::link(&bastion_ns, "10.213.2.1/24", &target_ns, "10.213.2.2/24");
    let bastion = Sshd::start_with(SshdOptions {
        netns: Some((bastion_ns.name().to_owned(), "10.213.1.2".to_owned())),
        ..SshdOptions::default()
    });
    let ferry_dir = Path::new(FERRY).parent().unwrap().to_owned();
    let target = Sshd::start_with(SshdOptions {
        netns: Some((target_ns.name().to_owned(), "10.213.2.2".to_owned())),
        path: Some(remote_path(&[&ferry_dir])),
        ..SshdOptions::default()
    });
    assert!(!client.can_connect("10.213.2.2", 22), "the client must not reach the target directly");
    assert!(client.can_connect("10.213.1.2", 22), "the client reaches the bastion");
    Some(Net { bastion, target, client, _namespaces: vec![bastion_ns, target_ns] })
}

/// `~/.ssh/config` text: the target by alias through the bastion by alias.
fn ssh_config(net: &Net, known_hosts: &Path) -> String {
    format!(
        "# as users write it\nHost target\n  HostName 10.213.2.2\n  ProxyJump jump\n  \
         IdentityFile {}\n\nHost jump bastion-*\n  HostName 10.213.1.2\n  User {}\n  \
         IdentityFile {}\n  IdentitiesOnly yes\n\nHost *\n  User {}\n  UserKnownHostsFile {}\n  \
         ConnectTimeout 5\n",
        net.target.identity_ed25519().display(),
        net.bastion.user(),
        net.bastion.identity_ed25519().display(),
        net.target.user(),
        known_hosts.display(),
    )
}

struct Run {
    _dir: tempfile::TempDir,
    home: PathBuf,
    root: PathBuf,
    top: String,
    host_root: PathBuf,
}

fn prepare() -> Run {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("local");
    let (_, top) = ferry_tests::add_base_and_big(FERRY, &root, &dir.path().join("src"), 3);
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let host_root = dir.path().join("host");
    Run { home, root, top, host_root, _dir: dir }
}

/// `ferry copy --to ssh://target?root=…` run in the client namespace with `HOME` = the run's.
fn copy(net: &Net, run: &Run, extra: &[&str]) -> Output {
    let uri = format!("ssh://target?root={}", run.host_root.display());
    let mut command = net.client.command(FERRY);
    for var in ["FERRY_ROOT", "FERRY_STORE_DIR", "FERRY_STATE_DIR", "FERRY_STORE", "SSH_AUTH_SOCK"]
    {
        command.env_remove(var);
    }
    command.env("HOME", &run.home).arg("--root").arg(&run.root).args(["copy", "--json"]);
    let out = command.args(extra).args(["--authorize", "--to", &uri, &run.top]).output().unwrap();
    eprintln!("ferry copy: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn both_known_hosts(net: &Net) -> String {
    std::fs::read_to_string(net.bastion.known_hosts()).unwrap()
        + &std::fs::read_to_string(net.target.known_hosts()).unwrap()
}

#[test]
fn copy_through_a_bastion_from_ssh_config() {
    let Some(net) = net() else { return };
    let run = prepare();
    let known = run.home.join(".ssh/known_hosts.test");
    std::fs::write(&known, both_known_hosts(&net)).unwrap();
    std::fs::write(run.home.join(".ssh/config"), ssh_config(&net, &known)).unwrap();

    let out = copy(&net, &run, &[]);
    assert!(
        out.status.success(),
        "{}\nbastion log:\n{}\ntarget log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        net.bastion.log(),
        net.target.log()
    );
    assert!(
        ferry_tests::store_paths(FERRY, &run.host_root).contains(&run.top),
        "the copy did not land"
    );

    // The same settings from a file given with --ssh-config, ~/.ssh/config gone.
    let file = run.home.join("elsewhere.conf");
    std::fs::rename(run.home.join(".ssh/config"), &file).unwrap();
    let out = copy(&net, &run, &["--ssh-config", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = copy(&net, &run, &[]);
    assert!(!out.status.success(), "without the config, `target` is no host");
}

#[test]
fn a_wrong_bastion_key_is_refused_with_both_keys() {
    let Some(net) = net() else { return };
    let run = prepare();
    // known_hosts records the target's key under the bastion's address.
    let wrong = format!(
        "10.213.1.2 {}\n{}",
        net.target.host_key(),
        std::fs::read_to_string(net.target.known_hosts()).unwrap()
    );
    let known = run.home.join(".ssh/known_hosts.test");
    std::fs::write(&known, wrong).unwrap();
    std::fs::write(run.home.join(".ssh/config"), ssh_config(&net, &known)).unwrap();

    let out = copy(&net, &run, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("HOST KEY MISMATCH"), "{stderr}");
    assert!(stderr.contains("10.213.1.2:22 (bastion for 10.213.2.2:22)"), "{stderr}");
    assert!(stderr.contains(net.target.host_key()), "the expected key: {stderr}");
    assert!(stderr.contains(net.bastion.host_key()), "the offered key: {stderr}");
    assert!(!run.host_root.exists(), "nothing reached the target");
}
