//! Rough timings (ignored by default; run with
//! `cargo test -p signing --release --test timing -- --ignored --nocapture`).

use std::time::Instant;

use nar_core::store_path::StoreDir;
use signing::acl::Acl;
use signing::bundle::{BundleReader, BundleWriter, ItemMeta};
use signing::guix::SigningKey;

fn per_op(label: &str, n: u32, mut f: impl FnMut(u32)) {
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!("{label}: {us:.1} µs/op");
}

#[test]
#[ignore]
fn timing() {
    let mut rng = rand::thread_rng();
    for (name, key) in [
        ("ecdsa (Guix default)", SigningKey::generate(&mut rng)),
        ("eddsa", SigningKey::generate_eddsa(&mut rng)),
    ] {
        let sigs: Vec<_> = (0..200u32).map(|i| key.sign(&[i as u8; 32])).collect();
        per_op(&format!("{name} sign"), 200, |i| {
            std::hint::black_box(key.sign(&[i as u8; 32]));
        });
        per_op(&format!("{name} verify"), 200, |i| assert!(sigs[i as usize].verify()));
    }
    let text = SigningKey::generate(&mut rng).sign(&[1; 32]).to_text();
    per_op("signature S-expression parse", 10_000, |_| {
        std::hint::black_box(signing::Sexp::parse(&text).unwrap());
    });

    // Bundle read + verify throughput: one 256 MiB file.
    let key = SigningKey::generate(&mut rng);
    let mut w = nar_core::write::NarWriter::new(Vec::new());
    let contents = vec![0x5au8; 256 << 20];
    w.file_bytes(false, &contents).unwrap();
    let nar = w.finish().unwrap().0;
    let dir = StoreDir::guix();
    let meta = ItemMeta {
        path: dir.parse_path("/gnu/store/k9pad896kygyvpxli7f20bkl9813p9y4-big").unwrap(),
        references: vec![],
        deriver: None,
    };
    let t = Instant::now();
    let mut bw = BundleWriter::new(Vec::with_capacity(nar.len() + 4096), dir.clone());
    bw.write_signed(&meta, &mut &nar[..], &key).unwrap();
    let bundle = bw.finish().unwrap();
    let write_s = t.elapsed().as_secs_f64();
    let mut acl = Acl::new();
    acl.authorize(key.verifying_key().to_sexp()).unwrap();
    let t = Instant::now();
    let mut r = BundleReader::new(&bundle[..], dir.clone());
    let mut bytes = 0usize;
    let item = r
        .next_item_with(|ev, _| {
            if let nar_core::read::NarEvent::Data(d) = ev {
                bytes += d.len();
            }
            Ok(())
        })
        .unwrap()
        .unwrap();
    item.verify(&acl, &dir).unwrap();
    let read_s = t.elapsed().as_secs_f64();
    assert_eq!(bytes, contents.len());
    let mb = bundle.len() as f64 / 1e6;
    println!("bundle write+sign {mb:.0} MB: {:.2} GB/s", mb / 1e3 / write_s);
    println!("bundle read+verify (streaming) {mb:.0} MB: {:.2} GB/s", mb / 1e3 / read_s);
}
