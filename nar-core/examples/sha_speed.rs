//! Prints the in-memory SHA-256 rate of this machine (the ceiling for `ferry nar hash`).
fn main() {
    let buf = vec![7u8; 256 << 20];
    let start = std::time::Instant::now();
    let mut h = nar_core::hash::NarHasher::new();
    for _ in 0..4 {
        h.update(&buf);
    }
    let d = h.finish();
    let secs = start.elapsed().as_secs_f64();
    println!("sha256 {:.3} GB/s ({})", d.size as f64 / secs / 1e9, d.hash);
}
