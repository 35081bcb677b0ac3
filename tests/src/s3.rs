//! A throwaway S3-compatible server on loopback: moto's server mode (`python3 -m moto.server`,
//! PyPI `moto[server]`, version pinned in `.ci/run`), the S3 the binary-cache tests push to
//! and pull from.
//!
//! Why moto: it is the S3 emulator the AWS SDKs test against (boto's own), speaks the whole
//! S3 API ferry uses (HEAD, GET, PUT, multipart uploads, path-style addressing), accepts any
//! credentials, answers unsigned `GET`s (so Debian's Nix reads the same bucket as a plain HTTP
//! binary cache: [`Moto::http_url`]), and records every request it serves (method and URL), so
//! tests count what a push sent ([`Moto::requests`]) at the server rather than trusting the
//! client's own report.
//!
//! [`Moto::start`] runs it on a free `127.0.0.1` port with its recording file in a temp dir and
//! waits until it answers; it is killed (by PID) when the fixture is dropped. A missing moto is
//! a panic that says what to install, never a skip.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The access key every test uses (moto accepts any).
pub const ACCESS_KEY: &str = "ferry-test-key";
/// The secret key every test uses; tests check that no message shows it.
pub const SECRET_KEY: &str = "ferry-test-secret-6b1f0c";

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
    dir: TempDir,
}

/// One request the server served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, `HEAD`, `POST`, `DELETE`.
    pub method: String,
    /// The URL as the server saw it (path and query).
    pub url: String,
}

impl Moto {
    /// Start a server and wait until it answers (at most 60 s).
    pub fn start() -> Moto {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = fs::File::create(dir.path().join("moto.log")).unwrap();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_RECORDING", "1")
            .env("MOTO_RECORDER_FILEPATH", dir.path().join("requests.jsonl"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 -m moto.server: {e} ({INSTALL})"));
        let mut moto = Moto { child, port, dir };
        let started = Instant::now();
        loop {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!("moto exited ({status}): {} ({INSTALL})", moto.log());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "moto did not start: {}",
                moto.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Create `bucket`, with a policy that lets anyone read its objects (an HTTP binary cache,
    /// as Nix reads one) and write them (the fixture's unsigned [`Moto::put`]: the tests play
    /// a hostile cache). moto names a `HEAD`'s action `s3:HeadObject` (S3 checks
    /// `s3:GetObject`), hence both.
    pub fn create_bucket(&self, bucket: &str) {
        let (status, body) = self.request("PUT", &format!("/{bucket}"), &[]);
        assert_eq!(status, 200, "creating bucket {bucket}: {}", String::from_utf8_lossy(&body));
        let policy = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":"*","Action":["s3:GetObject","s3:HeadObject","s3:PutObject","s3:DeleteObject"],"Resource":"arn:aws:s3:::{bucket}/*"}}]}}"#
        );
        let (status, body) = self.request("PUT", &format!("/{bucket}?policy"), policy.as_bytes());
        assert!(
            status == 200 || status == 204,
            "policy of {bucket}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// The `s3://` URI of `bucket` on this server.
    pub fn uri(&self, bucket: &str) -> String {
        format!("s3://{bucket}?endpoint=http://127.0.0.1:{}&region=us-east-1", self.port)
    }

    /// The bucket as a plain HTTP binary cache (what Nix reads: `http://127.0.0.1:PORT/BUCKET`).
    pub fn http_url(&self, bucket: &str) -> String {
        format!("http://127.0.0.1:{}/{bucket}", self.port)
    }

    /// The environment that gives a client this server's credentials.
    pub fn env(&self) -> [(&'static str, &'static str); 3] {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ]
    }

    /// The object `bucket/key`, `None` when missing (an unsigned GET).
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let (status, body) = self.request("GET", &format!("/{bucket}/{key}"), &[]);
        match status {
            200 => Some(body),
            404 => None,
            s => panic!("GET {bucket}/{key}: {s}: {}", String::from_utf8_lossy(&body)),
        }
    }

    /// Replace the object `bucket/key` (an unsigned PUT: tampering, as a hostile cache would).
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let (status, answer) = self.request("PUT", &format!("/{bucket}/{key}"), body);
        assert_eq!(status, 200, "PUT {bucket}/{key}: {}", String::from_utf8_lossy(&answer));
    }

    /// Delete the object `bucket/key`.
    pub fn delete(&self, bucket: &str, key: &str) {
        let (status, _) = self.request("DELETE", &format!("/{bucket}/{key}"), &[]);
        assert!(status == 204 || status == 200, "DELETE {bucket}/{key}: {status}");
    }

    /// The keys of `bucket` (one unsigned list; tests' buckets hold fewer than 1000 objects).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let (status, body) = self.request("GET", &format!("/{bucket}?list-type=2"), &[]);
        assert_eq!(status, 200, "list {bucket}");
        let text = String::from_utf8_lossy(&body);
        text.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    /// Every request served since the start (or the last [`Moto::forget_requests`]), in order;
    /// the fixture's own are included.
    pub fn requests(&self) -> Vec<Request> {
        let text = fs::read_to_string(self.recording()).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let field = |name: &str| {
                    let start = line.find(&format!("\"{name}\": \""))? + name.len() + 5;
                    let end = line[start..].find('"')?;
                    Some(line[start..start + end].to_owned())
                };
                Some(Request { method: field("method")?, url: field("url")? })
            })
            .collect()
    }

    /// The recording as moto wrote it: one JSON object a line, with each request's headers
    /// (`Authorization` names the access key, never the secret).
    pub fn recording_text(&self) -> String {
        fs::read_to_string(self.recording()).unwrap_or_default()
    }

    /// Start counting requests afresh.
    pub fn forget_requests(&self) {
        let _ = fs::remove_file(self.recording());
    }

    fn recording(&self) -> PathBuf {
        self.dir.path().join("requests.jsonl")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// One HTTP/1.1 request (no credentials: moto does not check them); status and body.
    fn request(&self, method: &str, target: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes()).and_then(|_| s.write_all(body)).expect("send to moto");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("read moto's answer");
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
        let head = String::from_utf8_lossy(&answer[..split]).to_string();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
        let mut body = answer[split + 4..].to_vec();
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        (status, body)
    }
}

/// The body of a chunked transfer encoding.
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

const INSTALL: &str = "install it: python3 -m pip install 'moto[server]' (see .ci/run)";

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
