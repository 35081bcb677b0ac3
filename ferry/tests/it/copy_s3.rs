//! `ferry copy --to s3://` and `--from s3://` / `--from http://` against moto's S3 server
//! (`ferry_tests::s3`): a push killed in the middle of a multipart upload leaves no narinfo
//! without its NAR and resumes on the next run; the bucket then pulls into a fresh store over
//! both schemes, which verifies.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_tests::s3::{Moto, SECRET_KEY};
use ferry_tests::{assert_store_verifies, pseudo_random, stdout_ok};
use serde_json::Value;

use crate::util::{ferry_at, FERRY};

fn with_credentials(mut c: Command, moto: &Moto) -> Command {
    for (k, v) in moto.env() {
        c.env(k, v);
    }
    c
}

/// Every narinfo in the bucket points at a NAR object that is there.
fn assert_no_narinfo_without_its_nar(moto: &Moto, bucket: &str) {
    let keys = moto.keys(bucket);
    for k in keys.iter().filter(|k| k.ends_with(".narinfo")) {
        let text = String::from_utf8(moto.get(bucket, k).unwrap()).unwrap();
        let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
        assert!(keys.iter().any(|x| x == url), "{k} points at {url}, which is not there: {keys:?}");
    }
}

#[test]
fn a_push_killed_mid_upload_resumes_and_the_bucket_pulls_into_a_fresh_store() {
    let moto = Moto::start();
    moto.create_bucket("fleet");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("local");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Incompressible: its NAR goes as a multipart upload of several parts.
    std::fs::write(src.join("big"), pseudo_random(17, 64 << 20)).unwrap();
    std::fs::write(src.join("small"), b"small\n").unwrap();
    let add = |p: &Path| stdout_ok(ferry_at(&root).args(["store", "add"]).arg(p)).trim().to_owned();
    let big = add(&src.join("big"));
    let small = add(&src.join("small"));
    let uri = moto.uri("fleet");

    // Killed once a part of the big NAR has reached the server.
    moto.forget_requests();
    let mut cmd = ferry_at(&root);
    cmd.args(["copy", "--to", &uri, &small, &big]);
    let mut child = with_credentials(cmd, &moto).spawn().unwrap();
    let started = Instant::now();
    loop {
        if moto.requests().iter().any(|r| r.method == "PUT" && r.url.contains("partNumber=")) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the push ended before a part was sent");
        assert!(started.elapsed() < Duration::from_secs(120), "no part was sent");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_no_narinfo_without_its_nar(&moto, "fleet");
    let big_hash = Path::new(&big).file_name().unwrap().to_str().unwrap()[..32].to_owned();
    assert!(
        moto.get("fleet", &format!("{big_hash}.narinfo")).is_none(),
        "narinfo of a partial NAR"
    );

    // The next run resumes: what is missing is sent, and everything lands.
    let mut cmd = ferry_at(&root);
    cmd.args(["copy", "--json", "--to", &uri, &small, &big]);
    let out = stdout_ok(&mut with_credentials(cmd, &moto));
    let json: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(json["paths_sent"].as_u64().unwrap() >= 1, "{json}");
    assert_no_narinfo_without_its_nar(&moto, "fleet");
    assert!(moto.get("fleet", &format!("{big_hash}.narinfo")).is_some());

    // And a third sends nothing.
    let mut cmd = ferry_at(&root);
    cmd.args(["copy", "--json", "--to", &uri, &small, &big]);
    let out = stdout_ok(&mut with_credentials(cmd, &moto));
    let json: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["paths_sent"], 0, "{json}");

    // Pull into fresh stores that trust the pushing machine's Nix key.
    let pk = std::fs::read(root.join("var/ferry/nix-signing-key.pub")).unwrap();
    for (label, from) in [("s3", uri.clone()), ("http", moto.http_url("fleet"))] {
        let fresh = tmp.path().join(format!("fresh-{label}"));
        // Untrusted first: refused, nothing lands.
        let mut cmd = ferry_at(&fresh);
        cmd.args(["copy", "--from", &from, &big]);
        let out = with_credentials(cmd, &moto).output().unwrap();
        assert!(!out.status.success(), "{label}: an unsigned-for-us cache was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("lacks a valid signature"), "{label}: {stderr}");
        let out = crate::util::output_with_stdin(
            {
                let mut c = ferry_at(&fresh);
                c.args(["archive", "--authorize"]);
                c
            },
            &pk,
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut cmd = ferry_at(&fresh);
        cmd.args(["copy", "--json", "--from", &from, &big, &small]);
        let out = stdout_ok(&mut with_credentials(cmd, &moto));
        let json: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(json["paths_received"], 2, "{label}: {json}");
        assert_store_verifies(FERRY, &fresh);
    }
}

#[test]
fn credentials_come_from_a_profile_and_are_never_shown() {
    let moto = Moto::start();
    moto.create_bucket("creds");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("local");
    std::fs::write(tmp.path().join("f"), b"f\n").unwrap();
    let path = stdout_ok(ferry_at(&root).args(["store", "add"]).arg(tmp.path().join("f")));
    let file = tmp.path().join("credentials");
    std::fs::write(
        &file,
        format!(
            "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = x\n\n\
             [profile ci]\naws_access_key_id = AKIDCI\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();
    let copy = |uri: &str, env: &[(&str, &str)]| {
        let mut c = ferry_at(&root);
        c.args(["copy", "--to", uri, path.trim()]).env("AWS_SHARED_CREDENTIALS_FILE", &file);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // AWS_PROFILE picks the section; requests are signed with its key.
    moto.forget_requests();
    let out = copy(&moto.uri("creds"), &[("AWS_PROFILE", "ci")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recording = moto.recording_text();
    assert!(recording.contains("Credential=AKIDCI/"), "not signed with the profile's key");
    assert!(!recording.contains(SECRET_KEY), "the secret travelled");
    // A profile the file lacks: an error that names it, and no secret anywhere.
    let out = copy(&format!("{}&profile=nope", moto.uri("creds")), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no profile [nope]"), "{stderr}");
    assert!(!stderr.contains(SECRET_KEY), "{stderr}");
    // A server that is not there: the error names the bucket, not the secret.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let uri = format!("s3://creds?endpoint=http://127.0.0.1:{port}&profile=ci");
    let out = copy(&uri, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("s3://creds"), "{stderr}");
    assert!(!stderr.contains(SECRET_KEY), "{stderr}");
}
