//! Delta frames: round trips on generated pairs, the fallbacks, the memory bound, base selection.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use nar_core::hash::{NarDigest, NarHasher};
use rand::{Rng, RngCore, SeedableRng};
use transfer::delta::bases::{self, BaseReason, HeldPath};
use transfer::delta::stream::{self as delta, DeltaError, EncodeParams, VerifiedBase};

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Random bytes that compress a little (like code): runs drawn from a small vocabulary.
fn codeish(seed: u64, len: usize) -> Vec<u8> {
    let mut r = rng(seed);
    let words: Vec<Vec<u8>> = (0..512)
        .map(|_| {
            let n = r.gen_range(2..24);
            (0..n).map(|_| r.gen()).collect()
        })
        .collect();
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        v.extend_from_slice(&words[r.gen_range(0..words.len())]);
    }
    v.truncate(len);
    v
}

/// `base` with a few edits: bytes changed here and there, a block inserted, one removed.
fn edited(base: &[u8], seed: u64) -> Vec<u8> {
    let mut r = rng(seed);
    let mut v = base.to_vec();
    for _ in 0..(v.len() / 20_000).max(1) {
        let i = r.gen_range(0..v.len());
        v[i] = r.gen();
    }
    let at = v.len() / 3;
    let mut ins = vec![0u8; 5000];
    r.fill_bytes(&mut ins);
    v.splice(at..at, ins);
    let at = v.len() * 2 / 3;
    v.drain(at..at + 3000.min(v.len() - at));
    v
}

fn write_tree(dir: &Path, files: &[(&str, &[u8])]) {
    fs::create_dir_all(dir).unwrap();
    for (name, data) in files {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
}

fn nar_of(path: &Path) -> (Vec<u8>, NarDigest) {
    let mut v = Vec::new();
    let d = nar_core::dump::dump_hashed(path, &mut v).unwrap();
    (v, d)
}

fn digest(b: &[u8]) -> NarDigest {
    let mut h = NarHasher::new();
    h.update(b);
    h.finish()
}

/// Encode `new` against the base tree at `base_dir`, rebuild the base there, decode, verify.
fn round_trip(base_dir: &Path, new: &[u8], params: &EncodeParams) -> (Vec<u8>, delta::EncodeStats) {
    let (base, bd) = nar_of(base_dir);
    let mut stream = Vec::new();
    let stats = delta::encode(&base, &bd, new, new.len() as u64, params, &mut stream).unwrap();
    assert_eq!(stats.delta_bytes, stream.len() as u64);
    assert_eq!(stats.new_digest, Some(digest(new)));
    let verified = VerifiedBase::rebuild(base_dir, &bd).unwrap();
    let mut out = Vec::new();
    let got = delta::decode_verified(&verified, &stream[..], &mut out, &digest(new)).unwrap();
    assert_eq!(got, digest(new));
    assert_eq!(out, new, "decoded NAR differs");
    (stream, stats)
}

#[test]
fn small_pair_is_much_smaller_than_full_zstd() {
    let t = tempfile::tempdir().unwrap();
    let lib = codeish(1, 400_000);
    let doc = codeish(2, 30_000);
    write_tree(&t.path().join("old"), &[("lib/libfoo.so", &lib), ("share/doc/README", &doc)]);
    let lib2 = edited(&lib, 3);
    write_tree(&t.path().join("new"), &[("lib/libfoo.so", &lib2), ("share/doc/README", &doc)]);
    let (new, _) = nar_of(&t.path().join("new"));
    let (stream, stats) = round_trip(&t.path().join("old"), &new, &EncodeParams::level(3));
    assert_eq!(stats.segments.len(), 1);
    let full = zstd::bulk::compress(&new, 19).unwrap();
    assert!(
        stream.len() * 5 < full.len(),
        "delta {} B vs full zstd-19 {} B",
        stream.len(),
        full.len()
    );
}

#[test]
fn empty_new_and_tiny_pairs() {
    let t = tempfile::tempdir().unwrap();
    write_tree(&t.path().join("old"), &[("empty", b"")]);
    // An empty new "NAR" (edge case of the format): zero segments.
    let (stream, stats) = round_trip(&t.path().join("old/empty"), b"", &EncodeParams::level(1));
    assert!(stats.segments.is_empty());
    assert_eq!(stream.len(), 60);
    // Empty file -> empty directory.
    fs::create_dir_all(t.path().join("newdir")).unwrap();
    let (new, _) = nar_of(&t.path().join("newdir"));
    round_trip(&t.path().join("old/empty"), &new, &EncodeParams::level(19));
}

#[test]
fn identical_pair_costs_almost_nothing() {
    let t = tempfile::tempdir().unwrap();
    let data = codeish(7, 1_000_000);
    write_tree(&t.path().join("old"), &[("bin/prog", &data)]);
    let (new, _) = nar_of(&t.path().join("old"));
    let (stream, _) = round_trip(&t.path().join("old"), &new, &EncodeParams::level(3));
    assert!(stream.len() < 2_000, "identical pair took {} B", stream.len());
}

#[test]
fn unrelated_pair_still_round_trips() {
    let t = tempfile::tempdir().unwrap();
    let mut a = vec![0u8; 300_000];
    rng(11).fill_bytes(&mut a);
    let mut b = vec![0u8; 250_000];
    rng(12).fill_bytes(&mut b);
    write_tree(&t.path().join("old"), &[("x", &a)]);
    write_tree(&t.path().join("new"), &[("y", &b)]);
    let (new, _) = nar_of(&t.path().join("new"));
    let (stream, _) = round_trip(&t.path().join("old"), &new, &EncodeParams::level(3));
    assert!(stream.len() < new.len() + 1024);
}

#[test]
fn base_missing_on_host_falls_back() {
    let t = tempfile::tempdir().unwrap();
    let err = VerifiedBase::rebuild(&t.path().join("gone"), &digest(b"whatever")).unwrap_err();
    assert!(matches!(err, DeltaError::BaseUnavailable { .. }), "{err}");
    assert!(err.falls_back_to_full());
}

#[test]
fn base_corrupted_on_host_falls_back_and_full_transfer_verifies() {
    let t = tempfile::tempdir().unwrap();
    let lib = codeish(21, 200_000);
    write_tree(&t.path().join("old"), &[("lib.so", &lib)]);
    write_tree(&t.path().join("new"), &[("lib.so", &edited(&lib, 22))]);
    let (base, bd) = nar_of(&t.path().join("old"));
    let (new, nd) = nar_of(&t.path().join("new"));
    let mut stream = Vec::new();
    delta::encode(&base, &bd, &new[..], new.len() as u64, &EncodeParams::level(3), &mut stream)
        .unwrap();

    // Same size, one byte flipped on the host's copy of the base.
    let mut bad = lib.clone();
    bad[1234] ^= 0x40;
    fs::write(t.path().join("old/lib.so"), &bad).unwrap();
    let err = VerifiedBase::rebuild(&t.path().join("old"), &bd).unwrap_err();
    assert!(matches!(err, DeltaError::BaseCorrupt { .. }), "{err}");
    // Larger than recorded: refused without reading it all.
    fs::write(t.path().join("old/lib.so"), codeish(23, 900_000)).unwrap();
    let err = VerifiedBase::rebuild(&t.path().join("old"), &bd).unwrap_err();
    assert!(matches!(err, DeltaError::BaseCorrupt { .. }), "{err}");

    // Fallback: the full (plain zstd) transfer of the path, verified as any path.
    assert!(err.falls_back_to_full());
    let full = zstd::stream::encode_all(&new[..], 3).unwrap();
    let back = zstd::stream::decode_all(&full[..]).unwrap();
    assert_eq!(digest(&back), nd);
}

#[test]
fn tampered_truncated_or_misdirected_streams_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let lib = codeish(31, 300_000);
    write_tree(&t.path().join("old"), &[("lib.so", &lib)]);
    write_tree(&t.path().join("other"), &[("lib.so", &codeish(32, 1000))]);
    let (base, bd) = nar_of(&t.path().join("old"));
    let new = edited(&base, 33);
    let mut stream = Vec::new();
    delta::encode(&base, &bd, &new[..], new.len() as u64, &EncodeParams::level(3), &mut stream)
        .unwrap();
    let vb = VerifiedBase::rebuild(&t.path().join("old"), &bd).unwrap();

    for cut in [0, 10, 60, 80, stream.len() / 2, stream.len() - 1] {
        let err = delta::decode(&vb, &stream[..cut], std::io::sink()).unwrap_err();
        assert!(
            matches!(err, DeltaError::Malformed(_) | DeltaError::Zstd { .. }),
            "cut {cut}: {err}"
        );
    }
    let mut tampered = stream.clone();
    let i = tampered.len() - 10;
    tampered[i] ^= 1;
    assert!(delta::decode_verified(&vb, &tampered[..], std::io::sink(), &digest(&new)).is_err());
    // Bytes inside the frame's chunks but after the zstd frame are refused: append a chunk
    // before the terminator.
    let mut inside = stream[..stream.len() - 4].to_vec();
    inside.extend_from_slice(&4u32.to_le_bytes());
    inside.extend_from_slice(b"junk");
    inside.extend_from_slice(&0u32.to_le_bytes());
    let err = delta::decode(&vb, &inside[..], std::io::sink()).unwrap_err();
    assert!(matches!(err, DeltaError::Malformed(_)), "{err}");
    let (_, od) = nar_of(&t.path().join("other"));
    let other = VerifiedBase::rebuild(&t.path().join("other"), &od).unwrap();
    let err = delta::decode(&other, &stream[..], std::io::sink()).unwrap_err();
    assert!(matches!(err, DeltaError::BaseMismatch { .. }), "{err}");
    // A wrong expected hash for the result.
    let err = delta::decode_verified(&vb, &stream[..], std::io::sink(), &digest(b"x")).unwrap_err();
    assert!(matches!(err, DeltaError::NewHashMismatch { .. }), "{err}");
}

/// A pair above the (here scaled-down) frame budget goes as aligned segments, each within the
/// budget, and still finds the shifted content.
#[test]
fn pair_above_the_memory_bound_is_segmented_and_aligned() {
    let t = tempfile::tempdir().unwrap();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..24 {
        files.push((format!("lib/modules/6.1.0-50/mod{i:02}.ko"), codeish(100 + i, 120_000)));
    }
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    write_tree(&t.path().join("old"), &refs);
    // New: every module rebuilt (small edits) *and* moved, plus a new 200 KB file up front.
    let mut new_files: Vec<(String, Vec<u8>)> = files
        .iter()
        .enumerate()
        .map(|(i, (n, d))| (n.replace("6.1.0-50", "6.1.0-56"), edited(d, 200 + i as u64)))
        .collect();
    new_files.push(("boot/vmlinuz".into(), codeish(300, 200_000)));
    let refs: Vec<(&str, &[u8])> =
        new_files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    write_tree(&t.path().join("new"), &refs);
    let (new, _) = nar_of(&t.path().join("new"));
    let (base, _) = nar_of(&t.path().join("old"));
    let budget = 1 << 20;
    let params = EncodeParams { level: 3, segment_max: 256 << 10, frame_budget: budget };
    assert!((base.len() + new.len()) as u64 > budget);
    let (stream, stats) = round_trip(&t.path().join("old"), &new, &params);
    assert!(stats.segments.len() >= 12, "{:?}", stats.segments);
    for &(off, len, seg, _) in &stats.segments {
        assert!(len + seg <= budget, "frame {len}+{seg} over budget");
        assert!(off + len <= base.len() as u64);
    }
    let full = zstd::bulk::compress(&new, 3).unwrap();
    assert!(
        stream.len() * 3 < full.len(),
        "segmented delta {} B vs zstd-3 {} B",
        stream.len(),
        full.len()
    );
}

#[test]
fn base_above_the_in_memory_bound_is_refused() {
    let big = NarDigest { hash: digest(b"").hash, size: delta::MAX_BASE_NAR + 1 };
    let err = VerifiedBase::rebuild(Path::new("/nonexistent"), &big).unwrap_err();
    assert!(matches!(err, DeltaError::TooLarge { .. }), "{err}");
}

#[test]
fn new_stream_shorter_or_longer_than_announced_is_an_error() {
    let base = b"nix-archive-1 base".to_vec();
    let bd = digest(&base);
    let new = vec![7u8; 1000];
    let e = delta::encode(&base, &bd, &new[..], 1001, &EncodeParams::level(1), std::io::sink())
        .unwrap_err();
    assert!(matches!(e, DeltaError::Io(_)), "{e}");
    let e = delta::encode(&base, &bd, &new[..], 999, &EncodeParams::level(1), std::io::sink())
        .unwrap_err();
    assert!(matches!(e, DeltaError::Io(_)), "{e}");
}

#[test]
fn name_version_like_parse_drv_name() {
    use bases::parse_name_version as p;
    assert_eq!(p("foo-1.2.3"), ("foo", "1.2.3"));
    assert_eq!(p("libreoffice-core-7.4.7"), ("libreoffice-core", "7.4.7"));
    assert_eq!(p("foo-bar-baz"), ("foo-bar-baz", ""));
    assert_eq!(p("firefox-esr-140.12.0esr"), ("firefox-esr", "140.12.0esr"));
    assert_eq!(p("linux-image-6.1.0-50-amd64"), ("linux-image", "6.1.0-50-amd64"));
    assert_eq!(p("hello"), ("hello", ""));
    assert_eq!(p("x-"), ("x-", ""));
    assert_eq!(p("python3.11-3.11.2"), ("python3.11", "3.11.2"));
}

#[test]
fn versions_compare_like_nix() {
    use bases::compare_versions as c;
    use std::cmp::Ordering::*;
    assert_eq!(c("1.0", "2.3"), Less);
    assert_eq!(c("2.1", "2.3"), Less);
    assert_eq!(c("2.3", "2.3"), Equal);
    assert_eq!(c("2.5", "2.3"), Greater);
    assert_eq!(c("3.1", "2.3"), Greater);
    assert_eq!(c("2.3.1", "2.3"), Greater);
    assert_eq!(c("2.3.1", "2.3a"), Greater);
    assert_eq!(c("2.3pre1", "2.3"), Less);
    assert_eq!(c("2.3", "2.3pre1"), Greater);
    assert_eq!(c("2.3pre3", "2.3pre12"), Less);
    assert_eq!(c("2.3a", "2.3c"), Less);
    assert_eq!(c("2.3", "2.3a"), Less);
    assert_eq!(c("140.12.0esr", "153.7.0esr"), Less);
}

fn held(name: &str, size: Option<u64>, same_place: bool) -> HeldPath {
    HeldPath {
        name: name.into(),
        id: format!("id-{name}"),
        nar_size: size,
        same_place,
        in_generation: same_place,
    }
}

#[test]
fn bases_ranked_by_place_name_and_version() {
    let h = [
        held("firefox-esr-115.0", Some(250_000_000), false),
        held("firefox-esr-140.12.0esr", Some(283_000_000), false),
        held("firefox-esr-160.0", Some(320_000_000), false),
        held("glibc-2.36", Some(30_000_000), false),
        held("firefox-bin-140", Some(290_000_000), false),
        held("ff-renamed-1.0", Some(300_000_000), true),
        held("firefox-esr-10.0", Some(20_000_000), false), // too small: dropped
    ];
    let r = bases::rank_bases("firefox-esr-153.7.0esr", Some(308_000_000), &h);
    let ids: Vec<&str> = r.iter().map(|b| b.id.as_str()).collect();
    // The same-place counterpart first even when renamed, then by version.
    assert_eq!(
        ids,
        [
            "id-ff-renamed-1.0",
            "id-firefox-esr-140.12.0esr",
            "id-firefox-esr-115.0",
            "id-firefox-esr-160.0",
        ]
    );
    assert_eq!(r[0].reason, BaseReason::SamePlace);
    assert_eq!(r[1].reason, BaseReason::SameName);
    // A same-name path of the current generation before other same-name paths.
    let mut in_gen = held("firefox-esr-115.0", Some(250_000_000), false);
    in_gen.in_generation = true;
    let r = bases::rank_bases("firefox-esr-153.7.0esr", Some(308_000_000), &[h[1].clone(), in_gen]);
    assert_eq!(r[0].id, "id-firefox-esr-115.0");
    assert_eq!(r[0].reason, BaseReason::SameNameInGeneration);
    // Same place and same name beats everything; a rebuild (same version) beats older ones.
    let h =
        [held("foo-1.0", None, false), held("foo-1.1", None, false), held("foo-0.9", None, true)];
    let r = bases::rank_bases("foo-1.1", None, &h);
    assert_eq!(r[0].reason, BaseReason::SamePlaceSameName);
    assert_eq!(r[1].id, "id-foo-1.1");
    assert_eq!(r[2].id, "id-foo-1.0");
    // Nothing of the same name, nothing at the same place: no candidate.
    assert!(bases::rank_bases("bar-1", None, &h[..2]).is_empty());
}

#[test]
fn closure_counterparts_follow_names_and_single_renames() {
    let m = |v: &[(&str, &[&str])]| -> HashMap<String, Vec<String>> {
        v.iter().map(|(k, r)| (k.to_string(), r.iter().map(|s| s.to_string()).collect())).collect()
    };
    let old = m(&[
        ("a-system-1", &["a-system-1", "b-bash-5.1", "c-lo-7.4.7", "d-kernel-6.1.176"]),
        ("b-bash-5.1", &["e-glibc-2.36"]),
        ("c-lo-7.4.7", &["e-glibc-2.36"]),
        ("d-kernel-6.1.176", &[]),
    ]);
    let new = m(&[
        ("A-system-2", &["B-bash-5.2", "C-lo-7.4.8", "D-linux-6.1.192"]),
        ("B-bash-5.2", &["E-glibc-2.37"]),
        ("C-lo-7.4.8", &["E-glibc-2.37"]),
        ("D-linux-6.1.192", &[]),
    ]);
    fn name(p: &str) -> &str {
        p.split_once('-').unwrap().1
    }
    let pairs = bases::closure_counterparts("a-system-1", &old, "A-system-2", &new, name);
    assert_eq!(pairs["A-system-2"], "a-system-1");
    assert_eq!(pairs["B-bash-5.2"], "b-bash-5.1");
    assert_eq!(pairs["C-lo-7.4.8"], "c-lo-7.4.7");
    assert_eq!(pairs["D-linux-6.1.192"], "d-kernel-6.1.176"); // the one rename
    assert_eq!(pairs["E-glibc-2.37"], "e-glibc-2.36");
}
