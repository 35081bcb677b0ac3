//! `transfer::target::nix_host` against Debian's Nix 2.8: `nix-store --store ROOT --serve --write` as a
//! subprocess driven over its pipes. A pushed closure verifies in Nix's store with the same
//! references and hashes; a second push sends no NAR; QueryPathInfos and DumpStorePath read
//! it back; a lying path info and a missing reference are refused with errors naming the path.
//!
//! Run: `cargo test -p transfer --test nix_serve` (needs `apt-get install -y nix-bin`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::nix_fixture::*;
use ferry_tests::nix::without_warnings;
use nar_core::store_path::StoreDir;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use transfer::target::nix_host::{NixServeClient, ServeError};

type Client = NixServeClient<ChildStdout, ChildStdin>;

/// Start `nix-store --store ROOT --serve --write` and handshake.
async fn connect(root: &Path) -> (Client, Child) {
    let mut child = Command::from(nix_cmd("nix-store"))
        .arg("--store")
        .arg(root)
        .args(["--serve", "--write"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run nix-store: {e}; {INSTALL_HINT}"));
    let stdout = child.stdout.take().unwrap();
    let stdin = child.stdin.take().unwrap();
    let client = NixServeClient::handshake(stdout, stdin, StoreDir::nix()).await.unwrap();
    (client, child)
}

/// Close the session and return the server's stderr.
async fn finish(mut client: Client, mut child: Child) -> String {
    client.shutdown().await.unwrap();
    drop(client);
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    child.wait().await.unwrap();
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_verify_repush_and_read_back() {
    require_nix();
    let tmp = tempfile::tempdir().unwrap();
    let fx = build(&tmp.path().join("ferry"));
    let nix_root = tmp.path().join("nix");
    let closure = fx.store.closure(&fx.roots()).unwrap();
    let layout = fx.store.layout().clone();
    let physical = move |p: &_| layout.physical_path(p);

    let (mut client, child) = connect(&nix_root).await;
    assert_eq!(client.remote_version(), 0x207);
    let report = client.push_closure(&closure, &physical).await.unwrap();
    assert_eq!((report.paths_sent, report.paths_present), (4, 0));
    assert_eq!(report.nar_bytes_sent, closure.total_nar_size());
    finish(client, child).await;

    nix_store(&nix_root, &["--verify", "--check-contents"]);
    for p in fx.all() {
        let info = fx.info(&p);
        let refs = nix_store(&nix_root, &["-q", "--references", &fx.abs(&p)]);
        let mut refs: Vec<String> = refs.lines().map(str::to_owned).collect();
        refs.sort();
        assert_eq!(refs, info.absolute_references(&StoreDir::nix()), "{p}");
        let hash = nix_store(&nix_root, &["-q", "--hash", &fx.abs(&p)]);
        assert_eq!(hash.trim(), info.nar_hash.to_typed_nix32());
    }
    let deriver = nix_store(&nix_root, &["-q", "--deriver", &fx.abs(&fx.top)]);
    assert_eq!(deriver.trim(), fx.abs(&made_up_path("top.drv")));

    // Second session: everything is there, no NAR goes out.
    let (mut client, child) = connect(&nix_root).await;
    let report = client.push_closure(&closure, &physical).await.unwrap();
    assert_eq!((report.paths_sent, report.paths_present, report.nar_bytes_sent), (0, 4, 0));

    // QueryPathInfos: what Nix recorded, including the CA of the content-addressed path.
    let mut asked = fx.all();
    asked.push(made_up_path("not-there"));
    let infos = client.query_path_infos(&asked).await.unwrap();
    assert_eq!(infos.len(), 4);
    for got in &infos {
        let want = fx.info(&got.path);
        assert_eq!(got.nar_hash, want.nar_hash);
        assert_eq!(got.nar_size, want.nar_size);
        assert_eq!(got.references, want.references);
        assert_eq!(got.deriver, want.deriver);
        assert_eq!(got.ca, want.ca);
    }

    // DumpStorePath: byte for byte what ferry dumps, and the session goes on after it.
    for p in [&fx.lib, &fx.top] {
        let mut nar = Vec::new();
        let digest = client.dump_store_path(p, &mut nar).await.unwrap();
        let mut ours = Vec::new();
        nar_core::dump::dump(&fx.store.physical_path(p), &mut ours).unwrap();
        assert!(nar == ours, "NAR of {p} differs");
        assert_eq!(digest, fx.info(p).nar_digest());
    }
    let valid = client.query_valid_paths(&asked, false, false).await.unwrap();
    assert_eq!(valid.len(), 4);
    let stderr = finish(client, child).await;
    assert!(without_warnings(&stderr).is_empty(), "server stderr: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_path() {
    require_nix();
    let tmp = tempfile::tempdir().unwrap();
    let fx = build(&tmp.path().join("ferry"));
    let nix_root = tmp.path().join("nix");

    // A path info that lies about the NAR: caught before the last byte goes out.
    let mut lying = fx.info(&fx.lib);
    lying.nar_hash = nar_core::hash::Sha256Hash::of(b"something else");
    let (mut client, child) = connect(&nix_root).await;
    let item = (lying, fx.store.physical_path(&fx.lib));
    let err = client.add_paths(std::slice::from_ref(&item)).await.unwrap_err();
    assert!(matches!(err, ServeError::NarMismatch { .. } | ServeError::Closed { .. }), "{err}");
    assert!(err.to_string().contains("libfoo-1.0"), "{err}");
    // The connection is not reused after an error mid-command.
    let again =
        client.query_valid_paths(std::slice::from_ref(&fx.lib), false, false).await.unwrap_err();
    assert!(matches!(again, ServeError::Poisoned), "{again}");
    drop(client);
    drop(child);

    // A reference the server does not have: it refuses, the error names the path.
    let (mut client, child) = connect(&nix_root).await;
    let items: Vec<(closure::PathInfo, PathBuf)> =
        [&fx.app].iter().map(|p| (fx.info(p), fx.store.physical_path(p))).collect();
    let err = client.add_paths(&items).await.unwrap_err();
    assert!(err.to_string().contains("app-2.1"), "{err}");
    assert!(matches!(err, ServeError::Closed { op: "AddToStoreNar", .. }), "{err}");
    drop(client);
    let mut stderr = String::new();
    let mut child = child;
    child.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    assert!(stderr.contains("libfoo-1.0' is not valid"), "server said: {stderr}");
    // Nothing invalid became valid.
    nix_store(&nix_root, &["--verify", "--check-contents"]);
    let out = run(
        nix_cmd("nix-store").arg("--store").arg(&nix_root).args(["-q", "--hash", &fx.abs(&fx.app)]),
        false,
    );
    assert!(!out.status.success(), "app became valid");
}

/// The fixture's closure in a ferry store under `tmp/ferry`, pushed into a Nix store at
/// `tmp/nix` (whose root is returned) for the pull tests.
async fn nix_host_holding_the_fixture(tmp: &Path) -> (Fixture, PathBuf, closure::ValidatedClosure) {
    require_nix();
    let fx = build(&tmp.join("ferry"));
    let nix_root = tmp.join("nix");
    let closure = fx.store.closure(&fx.roots()).unwrap();
    let layout = fx.store.layout().clone();
    let (mut client, child) = connect(&nix_root).await;
    client.push_closure(&closure, &move |p: &_| layout.physical_path(p)).await.unwrap();
    finish(client, child).await;
    (fx, nix_root, closure)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_closure_from_nix_into_a_ferry_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (fx, nix_root, closure) = nix_host_holding_the_fixture(tmp.path()).await;

    let dest_layout =
        store::StoreLayout::new(tmp.path().join("dest"), StoreDir::nix(), None).unwrap();
    let mut dest = store::Store::open(dest_layout).unwrap();
    let (mut client, child) = connect(&nix_root).await;
    // Nix holds these paths unsigned: refused when signatures are required.
    let key = signing::nix::SigningKey::generate("k-1", &mut rand::thread_rng()).verifying_key();
    let err = client.pull_closure(&fx.roots(), &mut dest, Some(&[key])).await.unwrap_err();
    assert!(matches!(err, ServeError::Untrusted { .. }), "{err}");
    assert!(dest.all_valid_paths().unwrap().is_empty());

    let report = client.pull_closure(&fx.roots(), &mut dest, None).await.unwrap();
    assert_eq!((report.paths_received, report.paths_present), (4, 0));
    assert_eq!(report.nar_bytes_received, closure.total_nar_size());
    assert!(dest.verify(true).unwrap().is_clean());
    for p in fx.all() {
        let (got, want) = (dest.path_info(&p).unwrap(), fx.info(&p));
        assert_eq!(
            (got.nar_hash, &got.references, &got.deriver),
            (want.nar_hash, &want.references, &want.deriver)
        );
    }
    let again = client.pull_closure(std::slice::from_ref(&fx.top), &mut dest, None).await.unwrap();
    assert_eq!((again.paths_received, again.paths_present), (0, 3));
    let stderr = finish(client, child).await;
    assert!(without_warnings(&stderr).is_empty(), "server stderr: {stderr}");
}

/// A path whose NAR does not match its hash (its file changed on the Nix host) is refused by
/// name; the paths pulled intact before it are registered and the store verifies clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_keeps_what_arrived_before_a_corrupt_path() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (fx, nix_root, _) = nix_host_holding_the_fixture(tmp.path()).await;

    // Flip one byte of `top` (or of a file in it) in the Nix store; its database keeps the old
    // hash.
    let top_dir = nix_root.join(fx.abs(&fx.top).trim_start_matches('/'));
    let mut stack = vec![];
    let mut file = None;
    if top_dir.is_dir() {
        stack.push(top_dir.clone());
    } else {
        file = Some(top_dir.clone());
    }
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() && std::fs::metadata(entry.path()).unwrap().len() > 0 {
                file = Some(entry.path());
            }
        }
    }
    let file = file.expect("top has a non-empty file");
    for dir in [nix_root.join("nix/store"), file.parent().unwrap().to_owned()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&file, bytes).unwrap();

    let dest_layout =
        store::StoreLayout::new(tmp.path().join("dest"), StoreDir::nix(), None).unwrap();
    let mut dest = store::Store::open(dest_layout).unwrap();
    let (mut client, child) = connect(&nix_root).await;
    let err =
        client.pull_closure(std::slice::from_ref(&fx.top), &mut dest, None).await.unwrap_err();
    match &err {
        ServeError::Import { path, .. } => assert_eq!(path, &fx.abs(&fx.top), "{err}"),
        other => panic!("expected an import error for top, got {other}"),
    }
    let top_closure = fx.store.closure(std::slice::from_ref(&fx.top)).unwrap();
    let valid: std::collections::BTreeSet<_> =
        dest.all_valid_paths().unwrap().into_iter().collect();
    let expected: std::collections::BTreeSet<_> =
        top_closure.paths().filter(|p| **p != fx.top).cloned().collect();
    assert_eq!(valid, expected, "the references of top arrived intact and are registered");
    assert!(dest.verify(true).unwrap().is_clean());
    drop(client);
    let _ = child;
}
