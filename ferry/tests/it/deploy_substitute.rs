//! Hosts that substitute: `ferry deploy --push-to s3://…` puts the closure into moto's bucket
//! (`ferry_tests::s3`) first, then a second host with `substitute-from` pointing at the bucket
//! (read over plain HTTP) fetches its paths from it itself; the coordinator sends only what the
//! bucket lacks (a deleted narinfo) or what it holds tampered (a flipped byte in a NAR), and
//! the table's JSON counts both sources.

use std::fs;
use std::path::Path;

use ferry_tests::s3::Moto;
use ferry_tests::sshd::{remote_path, Fleet, Sshd, SshdOptions};
use serde_json::Value;

use crate::util::{coordinator, ferry_dir};

fn machine(name: &str, sshd: &Sshd, extra: &str) -> String {
    format!(
        "[[machine]]\nname = \"{name}\"\noperating-system = \"base\"\n\
         [machine.configuration]\nhost-name = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\n\
         identity = \"{}\"\nhost-key = \"{}\"\nroot = \"{}\"\nconfirm-timeout = 20\n{extra}\n",
        sshd.port(),
        sshd.user(),
        sshd.identity_ed25519().display(),
        sshd.host_key(),
        sshd.dir().join("root").display()
    )
}

/// `ferry deploy FILE --json ARGS` in `dir`, which must succeed: the machine's JSON row, and
/// stderr.
fn deploy(dir: &Path, moto: &Moto, args: &[&str], name: &str) -> (Value, String) {
    let mut c = coordinator(dir);
    c.args(["deploy", "fleet.toml", "--json"]).args(args);
    for (k, v) in moto.env() {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ferry deploy {args:?}:\n{stdout}\n{stderr}");
    let json: Value = serde_json::from_str(stdout.trim()).unwrap();
    let row = json["machines"].as_array().unwrap().iter().find(|m| m["machine"] == name).cloned();
    (row.unwrap_or_else(|| panic!("no {name}: {json}")), stderr.into_owned())
}

#[test]
fn a_host_substitutes_from_the_bucket_and_the_coordinator_sends_the_rest() {
    let moto = Moto::start();
    moto.create_bucket("fleet");
    let dir = crate::util::coordinator_dir();
    let d = dir.path();
    crate::util::hello_package(d);
    fs::create_dir_all(d.join("pkgs/tool")).unwrap();
    fs::write(d.join("pkgs/tool/README"), "a second package\n".repeat(100)).unwrap();
    let fleet = Fleet::start_with(
        2,
        &SshdOptions { path: Some(remote_path(&[&ferry_dir()])), ..SshdOptions::default() },
    );
    let (web1, web2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let substitute = format!("substitute-from = [\"{}\"]", moto.http_url("fleet"));
    let text = format!(
        "[operating-system.base]\npackages = [\"./pkgs/hello\", \"./pkgs/tool\"]\nfiles = {{ motd = \"hi\" }}\n{}{}",
        machine("web1", web1, ""),
        machine("web2", web2, &substitute)
    );
    fs::write(d.join("fleet.toml"), text).unwrap();

    // web1, with --push-to: the closure goes into the bucket first, then to web1 as usual.
    let (row, _) = deploy(d, &moto, &["--on", "web1", "--push-to", &moto.uri("fleet")], "web1");
    let closure = row["paths_sent"].as_u64().unwrap();
    assert!(closure >= 3, "{row}");
    assert_eq!(row["paths_substituted"], 0, "{row}");
    let narinfos: Vec<String> =
        moto.keys("fleet").into_iter().filter(|k| k.ends_with(".narinfo")).collect();
    assert_eq!(narinfos.len() as u64, closure, "{narinfos:?}");

    // The bucket lacks one path that nothing refers to (the system) and holds the package
    // tampered (a flipped byte in its NAR, recompressed).
    let text_of = |k: &str| String::from_utf8(moto.get("fleet", k).unwrap()).unwrap();
    let field = |t: &str, f: &str| {
        t.lines().find_map(|l| l.strip_prefix(f)).map(str::to_owned).unwrap_or_default()
    };
    let hello_narinfo =
        narinfos.iter().find(|k| field(&text_of(k), "StorePath: ").ends_with("-hello")).unwrap();
    let url = field(&text_of(hello_narinfo), "URL: ");
    let mut nar = zstd::decode_all(&moto.get("fleet", &url).unwrap()[..]).unwrap();
    let n = nar.len();
    nar[n - 40] ^= 1;
    moto.put("fleet", &url, &zstd::encode_all(&nar[..], 3).unwrap());
    let referenced: Vec<String> = narinfos
        .iter()
        .flat_map(|k| {
            field(&text_of(k), "References: ").split(' ').map(str::to_owned).collect::<Vec<_>>()
        })
        .collect();
    let top = narinfos
        .iter()
        .find(|k| {
            let sp = field(&text_of(k), "StorePath: ");
            let base = sp.rsplit('/').next().unwrap().to_owned();
            !referenced.contains(&base)
        })
        .unwrap()
        .clone();
    moto.delete("fleet", &top);

    // web2 trusts the coordinator's Nix key (the one the narinfos are signed with).
    let pk = fs::read_to_string(d.join("coordinator/var/ferry/nix-signing-key.pub")).unwrap();
    let state = web2.dir().join("root/var/ferry");
    fs::create_dir_all(&state).unwrap();
    fs::write(state.join("trusted-public-keys"), format!("{pk}\n")).unwrap();

    let (row, stderr) = deploy(d, &moto, &["--on", "web2"], "web2");
    assert_eq!(row["success"], true, "{row}\n{stderr}");
    let (sent, substituted) =
        (row["paths_sent"].as_u64().unwrap(), row["paths_substituted"].as_u64().unwrap());
    assert_eq!(sent + substituted, closure, "{row}");
    assert!(substituted >= 1 && sent >= 2, "{row}");
    assert_eq!(row["substituted"][0]["paths"], substituted, "{row}");
    assert!(row["nar_bytes_substituted"].as_u64().unwrap() > 0, "{row}");
    assert!(stderr.contains("refused") && stderr.contains("-hello"), "{stderr}");
    let root = web2.dir().join("root");
    let out = crate::util::ferry_at(&root)
        .args(["store", "verify", "--check-contents"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
