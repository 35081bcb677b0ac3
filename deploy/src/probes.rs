//! The coordinator's health checks: the `tcp` and `http` checks of a declaration, run from
//! this machine against the host (part of confirmation; see `deployment`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::deployment::{HealthCheck, Machine};

/// Run machine `m`'s TCP and HTTP checks (host: the SSH host name, `localhost` for `local`);
/// the first failure.
pub fn coordinator_probes(m: &Machine) -> Result<(), String> {
    let host = m.configuration.host_name.clone().unwrap_or_else(|| "localhost".into());
    for check in &m.os.health_checks {
        match check {
            HealthCheck::Command { .. } => {}
            HealthCheck::Tcp { host: h, port, timeout } => {
                let h = h.clone().unwrap_or_else(|| host.clone());
                tcp_connect(&h, *port, *timeout).map_err(|e| format!("tcp {h}:{port}: {e}"))?;
            }
            HealthCheck::Http { url, status, timeout } => {
                let url = url.replace("{host}", &host);
                let got = http_status(&url, *timeout).map_err(|e| format!("{url}: {e}"))?;
                if got != *status {
                    return Err(format!("{url}: status {got}, expected {status}"));
                }
            }
        }
    }
    Ok(())
}

fn tcp_connect(host: &str, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
}

/// `GET url` over plain HTTP/1.0; returns the status code.
fn http_status(url: &str, timeout: Duration) -> Result<u16, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) =
        rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("bad port in {authority}"))?),
        None => (authority, 80),
    };
    let mut s = tcp_connect(host, port, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", line.lines().next().unwrap_or("")))
}
