//! Link shaping: the delay line's accounting with numbers, and the async wrapper in paused
//! (simulated) tokio time, so nothing depends on how busy the machine is.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transfer::shaping::{shaped_duplex, DelayLine, LinkSpec};

#[test]
fn delay_line_accounts_rate_and_latency() {
    let spec = LinkSpec { rate: 2_500_000.0, latency: Duration::from_millis(40), burst: 0 };
    let mut line = DelayLine::new(spec);
    // 2.5 MB handed over at t=0 in 100 chunks: the last arrives at 1 s + 40 ms.
    let mut last = Duration::ZERO;
    for _ in 0..100 {
        last = line.schedule(Duration::ZERO, 25_000);
    }
    assert_eq!(line.bytes(), 2_500_000);
    assert!((last.as_secs_f64() - 1.04).abs() < 1e-6, "{last:?}");
    // An idle link: a chunk handed over later is not delayed by the past.
    let t = line.schedule(Duration::from_secs(5), 2_500);
    assert!((t.as_secs_f64() - 5.041).abs() < 1e-6, "{t:?}");
    // Burst credit lets the first bytes go at once.
    let mut line = DelayLine::new(LinkSpec { burst: 25_000, ..spec });
    assert_eq!(line.schedule(Duration::ZERO, 25_000), Duration::from_millis(40));
    // Unlimited: latency only.
    let mut line = DelayLine::new(LinkSpec::unlimited());
    assert_eq!(line.schedule(Duration::from_secs(1), 1 << 30), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn shaped_pipe_carries_n_bytes_in_n_over_rate_plus_latency() {
    let link = LinkSpec::mbit(20.0, 40);
    let (mut a, mut b) = shaped_duplex(link, link);
    const N: usize = 5_000_000; // 2 s at 20 Mbit/s
    let t0 = tokio::time::Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = N;
        while left > 0 {
            let n = left.min(chunk.len());
            a.write_all(&chunk[..n]).await.unwrap();
            left -= n;
        }
        a.shutdown().await.unwrap();
        a
    });
    let mut got = 0usize;
    let mut first = None;
    let mut buf = vec![0u8; 100_000];
    loop {
        let n = b.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| t0.elapsed());
        got += n;
    }
    let took = t0.elapsed().as_secs_f64();
    writer.await.unwrap();
    assert_eq!(got, N);
    let ideal = N as f64 / link.rate + link.latency.as_secs_f64();
    assert!(took >= ideal * 0.97 && took <= ideal * 1.05, "took {took:.3} s, ideal {ideal:.3} s");
    let first = first.unwrap().as_secs_f64();
    assert!((0.040..0.050).contains(&first), "first byte after {first:.4} s");
    assert_eq!(b.line().bytes(), N as u64);
}

#[tokio::test(start_paused = true)]
async fn round_trip_costs_two_latencies() {
    let link = LinkSpec::mbit(100.0, 25);
    let (mut a, mut b) = shaped_duplex(link, link);
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 4];
        b.read_exact(&mut buf).await.unwrap();
        b.write_all(&buf).await.unwrap();
        b
    });
    let t0 = tokio::time::Instant::now();
    a.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    a.read_exact(&mut buf).await.unwrap();
    let rtt = t0.elapsed();
    echo.await.unwrap();
    assert_eq!(&buf, b"ping");
    assert!((Duration::from_millis(50)..Duration::from_millis(52)).contains(&rtt), "{rtt:?}");
}

/// A whole push through [`transfer::shaping::ShapedTransport`] (blocking relays, real time):
/// it lands intact, and cannot beat the emulated link (a lower bound only: a busy machine is
/// slower, never faster).
#[test]
fn shaped_transport_carries_a_push_no_faster_than_the_link() {
    use nar_core::store_path::StoreDir;
    use store::{Store, StoreLayout};
    use transfer::agent::AgentOptions;
    use transfer::push::{push_closure, NoProgress, PushOptions};
    use transfer::shaping::ShapedTransport;

    let dir = tempfile::tempdir().unwrap();
    let layout = |n: &str| StoreLayout::new(dir.path().join(n), StoreDir::guix(), None).unwrap();
    let mut local = Store::open(layout("local")).unwrap();
    let src = dir.path().join("blob");
    let mut x = 3u64;
    let blob: Vec<u8> = (0..400_000)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            (x >> 56) as u8
        })
        .collect();
    std::fs::write(&src, blob).unwrap();
    let item = local.add_path(&src, None).unwrap();
    let closure = local.closure(std::slice::from_ref(&item.path)).unwrap();
    let key = signing::guix::SigningKey::generate(&mut rand::thread_rng());
    let host = layout("host");
    let spec = LinkSpec { rate: 1_000_000.0, latency: Duration::from_millis(20), burst: 16 << 10 };
    let shaped = ShapedTransport {
        inner: Box::new(AgentOptions::new(host.clone()).in_process()),
        up: spec,
        down: spec,
    };
    let o = PushOptions { authorize: true, ..PushOptions::default() };
    let t = std::time::Instant::now();
    let s = push_closure(local.layout(), &closure, &shaped, &key, &o, &NoProgress).unwrap();
    let elapsed = t.elapsed().as_secs_f64();
    assert!(s.rejected.is_empty());
    assert!(Store::open(host).unwrap().is_valid(&item.path).unwrap());
    // Incompressible: the wire carries the whole NAR; at least wire / rate plus a few latencies.
    let floor = s.wire_bytes as f64 / spec.rate + 4.0 * 0.020;
    assert!(elapsed >= floor * 0.95, "{elapsed} s < {floor} s");
}
