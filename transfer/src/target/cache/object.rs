//! [`ObjectBackend`]: a binary cache in an S3 bucket (`s3://`, read and write) or behind an HTTP
//! server (`http(s)://`, read only), through `object_store` (Apache Arrow's client: S3 request
//! signing, multipart uploads, retries; TLS by rustls on ring).
//!
//! The client is async; this backend owns a small tokio runtime and blocks on it, so the
//! writer's and the reader's threads use it like a directory. Existence checks are `HEAD`s, 16
//! in flight. A file larger than [`PART`] is uploaded as a multipart upload of [`PART`]-sized
//! parts, [`PARTS_IN_FLIGHT`] at a time (memory per upload: a few parts), and becomes the
//! object only when the upload completes; one that fails is aborted, one that is killed never
//! became an object (S3 keeps its parts until the bucket's lifecycle rule or an abort removes
//! them) and is redone by the next push.
//!
//! # Credentials (`s3://`)
//!
//! In this order: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`, and the
//! other `AWS_*` variables `object_store` reads: web identity, container credentials); else the
//! profile `profile=` of the URI, or `AWS_PROFILE`, or `default`, of the credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, or `~/.aws/credentials`); else none, and requests go
//! unsigned (a public bucket). Secrets only ever go into request signatures: no message, no
//! `Debug` output, no error of this module holds one.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::http::HttpBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, PutPayload, RetryConfig, WriteMultipart,
};
use proto::uri::S3Location;

use super::{io_err, Backend, CacheError};

/// Part size of multipart uploads (S3's minimum is 5 MiB); smaller files go in one `PUT`.
pub const PART: usize = 8 << 20;
/// Parts of one upload in flight at once.
pub const PARTS_IN_FLIGHT: usize = 2;
/// `HEAD` requests in flight at once.
const HEADS_IN_FLIGHT: usize = 16;
/// Paths the writer prepares at once (requests wait on the network more than on the CPU).
const JOBS: usize = 3;

/// A binary cache in an object store.
pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    /// Key prefix inside the bucket, without slashes around it (may be empty).
    prefix: String,
    /// The cache's URI (no credentials), for messages.
    base: String,
    writable: bool,
    runtime: tokio::runtime::Runtime,
}

impl fmt::Debug for ObjectBackend {
    // Only the location: the client's own Debug would show its credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBackend").field("base", &self.base).finish_non_exhaustive()
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CacheError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ferry-object-store")
        .enable_all()
        .build()
        .map_err(|e| CacheError::Remote {
            op: "start the runtime for",
            location: "the object store client".into(),
            message: e.to_string(),
        })
}

/// Retries: a few, quickly (a cache that is down should say so in seconds, not minutes).
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: std::time::Duration::from_secs(60),
    }
}

fn remote(op: &'static str, location: &str) -> impl FnOnce(object_store::Error) -> CacheError {
    let location = location.to_owned();
    move |e| CacheError::Remote { op, location, message: e.to_string() }
}

impl ObjectBackend {
    /// The bucket `location` names, with credentials found as the module docs say.
    pub fn s3(location: &S3Location) -> Result<ObjectBackend, CacheError> {
        let mut base = format!("s3://{}", location.bucket);
        if !location.prefix.is_empty() {
            base = format!("{base}/{}", location.prefix);
        }
        let mut builder =
            AmazonS3Builder::from_env().with_bucket_name(&location.bucket).with_retry(retry());
        if let Some(region) = &location.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &location.endpoint {
            // S3-compatible servers (MinIO, Garage, moto...) address buckets by path.
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let from_env = std::env::var_os("AWS_ACCESS_KEY_ID").is_some()
            || std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
            || std::env::var_os("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
            || std::env::var_os("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some();
        if !from_env {
            match profile_credentials(location.profile.as_deref())? {
                Some(c) => {
                    builder = builder
                        .with_access_key_id(c.key_id)
                        .with_secret_access_key(c.secret_key.as_str());
                    if let Some(token) = c.token {
                        builder = builder.with_token(token.as_str());
                    }
                }
                None => builder = builder.with_skip_signature(true),
            }
        }
        let store = builder.build().map_err(remote("configure", &base))?;
        Ok(ObjectBackend {
            store: Arc::new(store),
            prefix: location.prefix.clone(),
            base,
            writable: true,
            runtime: runtime()?,
        })
    }

    /// The cache at `url` (`http(s)://…`), read only.
    pub fn http(url: &str) -> Result<ObjectBackend, CacheError> {
        let store = HttpBuilder::new()
            .with_url(url)
            .with_retry(retry())
            .with_client_options(ClientOptions::new().with_allow_http(true))
            .build()
            .map_err(remote("configure", url))?;
        Ok(ObjectBackend {
            store: Arc::new(store),
            prefix: String::new(),
            base: url.to_owned(),
            writable: false,
            runtime: runtime()?,
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, CacheError> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote("look up", &self.locate(key))(e)),
        }
    }

    /// Upload `file` as `key` in parts.
    async fn upload_parts(&self, key: &str, file: &Path) -> Result<(), CacheError> {
        let location = self.locate(key);
        let upload =
            self.store.put_multipart(&self.path(key)).await.map_err(remote("upload", &location))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let result = async {
            let mut f = File::open(file).map_err(io_err("open", file))?;
            // WriteMultipart gathers the parts itself: reads need not be part-sized.
            let mut buf = vec![0; 1 << 20];
            loop {
                let n = read_full(&mut f, &mut buf).map_err(io_err("read", file))?;
                if n == 0 {
                    break;
                }
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(remote("upload", &location))?;
                writer.write(&buf[..n]);
            }
            Ok::<_, CacheError>(())
        }
        .await;
        match result {
            Ok(()) => writer.finish().await.map(drop).map_err(remote("upload", &location)),
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }
}

/// Read until `buf` is full or the end.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

impl Backend for ObjectBackend {
    fn locate(&self, key: &str) -> String {
        if key.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{key}", self.base)
        }
    }

    fn exists(&self, keys: &[String]) -> Result<Vec<bool>, CacheError> {
        self.runtime.block_on(
            futures::stream::iter(keys)
                .map(|k| async move { self.head(k).await.map(|s| s.is_some()) })
                .buffered(HEADS_IN_FLIGHT)
                .try_collect(),
        )
    }

    fn size(&self, key: &str) -> Result<Option<u64>, CacheError> {
        self.runtime.block_on(self.head(key))
    }

    fn get(&self, key: &str) -> Result<Option<Box<dyn Read + Send + '_>>, CacheError> {
        let location = self.locate(key);
        match self.runtime.block_on(self.store.get(&self.path(key))) {
            Ok(result) => Ok(Some(Box::new(BlockingStream {
                runtime: &self.runtime,
                stream: result.into_stream(),
                buf: Bytes::new(),
                location,
            }))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote("read", &location)(e)),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), CacheError> {
        let payload = PutPayload::from(bytes.to_vec());
        self.runtime
            .block_on(self.store.put(&self.path(key), payload))
            .map(drop)
            .map_err(remote("write", &self.locate(key)))
    }

    fn spool_dir(&self) -> Result<PathBuf, CacheError> {
        Ok(std::env::temp_dir())
    }

    fn put_file(&self, key: &str, file: &Path, size: u64) -> Result<(), CacheError> {
        let result = self.runtime.block_on(async {
            if self.head(key).await? == Some(size) {
                return Ok(()); // complete already (content-addressed): a resumed push
            }
            if size <= PART as u64 {
                let bytes = fs::read(file).map_err(io_err("read", file))?;
                self.store
                    .put(&self.path(key), PutPayload::from(bytes))
                    .await
                    .map(drop)
                    .map_err(remote("upload", &self.locate(key)))
            } else {
                self.upload_parts(key, file).await
            }
        });
        let _ = fs::remove_file(file);
        result
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn default_jobs(&self) -> usize {
        JOBS
    }
}

/// An object's body as a blocking reader.
struct BlockingStream<'a> {
    runtime: &'a tokio::runtime::Runtime,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    buf: Bytes,
    location: String,
}

impl Read for BlockingStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => {
                    return Err(io::Error::other(format!("reading {}: {e}", self.location)))
                }
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}

/// Keys from a credentials file.
struct Credentials {
    key_id: String,
    secret_key: zeroize::Zeroizing<String>,
    token: Option<zeroize::Zeroizing<String>>,
}

/// The profile's keys in the shared credentials file, `None` when there is no file. A file
/// without the profile (when one was asked for by name) is an error; no message quotes the
/// file's contents.
fn profile_credentials(profile: Option<&str>) -> Result<Option<Credentials>, CacheError> {
    let env_profile = std::env::var("AWS_PROFILE").ok();
    let named = profile.map(str::to_owned).or(env_profile);
    let file = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(f) => PathBuf::from(f),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".aws/credentials"),
            None => return Ok(None),
        },
    };
    let text = match fs::read_to_string(&file) {
        Ok(t) => zeroize::Zeroizing::new(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound && named.is_none() => return Ok(None),
        Err(e) => {
            return Err(CacheError::Credentials(format!("cannot read {}: {e}", file.display())))
        }
    };
    let want = named.as_deref().unwrap_or("default");
    let parsed = parse_credentials(&text, want);
    match parsed {
        Some(c) => Ok(Some(c)),
        None if named.is_none() => Ok(None),
        None => Err(CacheError::Credentials(format!(
            "{} has no profile [{want}] with aws_access_key_id and aws_secret_access_key",
            file.display()
        ))),
    }
}

/// The keys of `[profile]` in an INI credentials file.
fn parse_credentials(text: &str, profile: &str) -> Option<Credentials> {
    let mut section = String::new();
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().trim_start_matches("profile ").trim().to_owned();
            continue;
        }
        if section != profile {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        let v = v.trim().to_owned();
        match k.trim() {
            "aws_access_key_id" => key_id = Some(v),
            "aws_secret_access_key" => secret = Some(zeroize::Zeroizing::new(v)),
            "aws_session_token" => token = Some(zeroize::Zeroizing::new(v)),
            _ => {}
        }
    }
    Some(Credentials { key_id: key_id?, secret_key: secret?, token })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_profiles() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = S\n\n\
                    [profile ci]\n# comment\naws_access_key_id=B\naws_secret_access_key=T\n\
                    aws_session_token = X\n[half]\naws_access_key_id = C\n";
        let d = parse_credentials(text, "default").unwrap();
        assert_eq!((d.key_id.as_str(), d.secret_key.as_str()), ("A", "S"));
        assert!(d.token.is_none());
        let ci = parse_credentials(text, "ci").unwrap();
        assert_eq!((ci.key_id.as_str(), ci.token.as_deref().map(String::as_str)), ("B", Some("X")));
        assert!(parse_credentials(text, "half").is_none());
        assert!(parse_credentials(text, "none").is_none());
    }
}
