//! The hermetic Nix of the tests (`ferry_tests::nix`): a local Nix and a Nix started on a
//! loopback sshd host both read only the tests' `nix.conf`, so a machine without the `nixbld`
//! group (Debian's `nix-bin` alone) gets no warning about it, and nothing reaches for a binary
//! cache.

use std::process::Command;

use ferry_tests::nix;
use ferry_tests::sshd::Sshd;

/// Checks `nix show-config` output and stderr: the tests' settings, and no word about the
/// missing build users group.
fn assert_tests_config(what: &str, stdout: &[u8], stderr: &[u8]) {
    let (stdout, stderr) = (String::from_utf8_lossy(stdout), String::from_utf8_lossy(stderr));
    let setting = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} =")).map(str::trim))
            .unwrap_or_else(|| panic!("{what}: no {name} in nix show-config:\n{stdout}"))
            .to_owned()
    };
    assert_eq!(setting("build-users-group"), "", "{what}");
    assert_eq!(setting("substituters"), "", "{what}");
    assert_eq!(setting("experimental-features"), "nix-command", "{what}");
    assert!(!stderr.contains("build-users-group"), "{what}: Nix warned:\n{stderr}");
}

#[test]
fn local_nix_reads_only_the_tests_configuration() {
    nix::require();
    let out = nix::command("nix").arg("show-config").output().expect("run nix");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_tests_config("local", &out.stdout, &out.stderr);
}

#[test]
fn nix_on_a_loopback_host_reads_only_the_tests_configuration() {
    nix::require();
    let sshd = Sshd::start();
    let out = Command::new("ssh")
        .arg("-F")
        .arg(sshd.ssh_config())
        .args(["peer", "nix", "show-config"])
        .output()
        .expect("run ssh");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), sshd.log());
    assert_tests_config("over ssh", &out.stdout, &out.stderr);
}
