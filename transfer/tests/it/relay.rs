//! The latency relay of `ferry bench --link kernel` ([`transfer::relay`]): bytes pass intact in
//! both directions and each direction's end of stream reaches the other side, through an
//! in-process pair and through the TCP → Unix → TCP chain the bench uses. (How long the bytes
//! take is not asserted: the machines running tests are noisy.)

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transfer::relay::{relay, Relay, SharedLatency};

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

#[tokio::test]
async fn both_directions_pass_intact_and_close() {
    let (client, relay_a) = tokio::io::duplex(8 * 1024);
    let (relay_b, server) = tokio::io::duplex(8 * 1024);
    let latency = SharedLatency::new(Duration::from_millis(2));
    // A small queue so that backpressure is exercised too.
    let relayed = tokio::spawn(async move { relay(relay_a, relay_b, &latency, 2).await });
    let (up, down) = (bytes(1, 700_000), bytes(2, 300_000));
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut server_r, mut server_w) = tokio::io::split(server);
    let (up2, down2) = (up.clone(), down.clone());
    // Writing and reading at once: each side's reading makes room for the other's writing.
    let c = tokio::spawn(async move {
        let mut got = Vec::new();
        let (written, read) = tokio::join!(
            async {
                client_w.write_all(&up2).await?;
                client_w.shutdown().await
            },
            client_r.read_to_end(&mut got)
        );
        written.unwrap();
        read.unwrap();
        got
    });
    let s = tokio::spawn(async move {
        let mut got = Vec::new();
        let (written, read) = tokio::join!(
            async {
                server_w.write_all(&down2).await?;
                server_w.shutdown().await
            },
            server_r.read_to_end(&mut got)
        );
        written.unwrap();
        read.unwrap();
        got
    });
    assert!(c.await.unwrap() == down, "server → client bytes differ");
    assert!(s.await.unwrap() == up, "client → server bytes differ");
    let (a_to_b, b_to_a) = relayed.await.unwrap().unwrap();
    assert_eq!((a_to_b, b_to_a), (up.len() as u64, down.len() as u64));
}

#[test]
fn tcp_to_unix_to_tcp_chain_echoes_and_half_closes() {
    // The server: reads everything, then answers with it reversed and closes.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap();
    let serving = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got.reverse();
        s.write_all(&got).unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("relay.sock");
    let outside = Relay::new(Duration::ZERO).unwrap();
    outside.unix_to_tcp(sock.clone(), server_addr).unwrap();
    let inside = Relay::new(Duration::from_millis(1)).unwrap();
    let front = inside.tcp_to_unix("127.0.0.1:0".parse().unwrap(), sock).unwrap();

    let sent = bytes(3, 1 << 20);
    let mut c = TcpStream::connect(front).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c.write_all(&sent).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    serving.join().unwrap();
    let mut expected = sent;
    expected.reverse();
    assert!(back == expected, "{} bytes back, {} expected", back.len(), expected.len());
}
