//! ECDSA over the twisted-Edwards curve edwards25519, as libgcrypt computes it for Guix keys
//! (guix-spec §3.4). This is **not** EdDSA.
//!
//! - Curve: edwards25519, `p = 2^255 - 19`, `a = -1`, `d = -121665/121666`, base point `G`,
//!   group order `n = 2^252 + 27742317777372353535851937790883648493` (253 bits).
//! - Secret: a scalar `x` mod `n`. Public: `Q = x·G`, encoded as in Ed25519.
//! - `e` = SHA-256 digest read big-endian and shifted right by 3 (truncation to 253 bits).
//! - `k` = RFC 6979 with HMAC-SHA-256, qlen = 253: `int2octets(x)` is 32 bytes big-endian,
//!   `bits2octets(h1) = int2octets((int(h1) >> 3) mod n)`, candidates `int(T) >> 3`.
//! - `r` = (affine Edwards **x** coordinate of `k·G`) mod `n`; `s = k⁻¹ (e + x r) mod n`.
//! - Verify: `w = s⁻¹`, `X = (e w)·G + (r w)·Q`, accept iff `0 < r, s < n` and `x(X) mod n = r`.
//!
//! As with any ECDSA, `(r, n - s)` is also valid for a valid `(r, s)`; libgcrypt accepts both
//! and so do we (Guix signs content hashes, so this malleability gives an attacker nothing).
//!
//! Group and scalar arithmetic come from `curve25519-dalek` (`EdwardsPoint`, `Scalar`). That
//! crate does not expose field elements, and ECDSA needs the affine **x** coordinate, which
//! Ed25519 compression drops (it keeps `y` and the sign of `x`). We recover `x` from the
//! compressed point with `num-bigint` modular arithmetic (`x² = (y²-1)/(d y²+1)` and a square
//! root mod `p`): three modular exponentiations per signature, well under a millisecond, and no
//! hand-written field code. Nothing here handles secrets in `num-bigint` values: only public
//! points go through that path.

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use hmac::{Hmac, Mac};
use num_bigint::BigUint;
use sha2::Sha256;
use zeroize::Zeroize;

type HmacSha256 = Hmac<Sha256>;

/// `p = 2^255 - 19`.
fn field_p() -> BigUint {
    (BigUint::from(1u8) << 255u32) - BigUint::from(19u8)
}

/// The affine Edwards x coordinate of `point`, as 32 little-endian bytes (canonical, `< p`).
pub(crate) fn affine_x(point: &EdwardsPoint) -> [u8; 32] {
    let compressed = point.compress().to_bytes();
    let sign = compressed[31] >> 7;
    let mut ybytes = compressed;
    ybytes[31] &= 0x7f;
    let p = field_p();
    let y = BigUint::from_bytes_le(&ybytes);
    let one = BigUint::from(1u8);
    // d = -121665/121666 mod p and sqrt(-1) mod p, as constants.
    let d = BigUint::parse_bytes(
        b"37095705934669439343138083508754565189542113879843219016388785533085940283555",
        10,
    )
    .unwrap_or_default();
    let sqrt_m1 = BigUint::parse_bytes(
        b"19681161376707505956807079304988542015446066515923890162744021073123829784752",
        10,
    )
    .unwrap_or_default();
    let y2 = &y * &y % &p;
    let u = (&y2 + &p - &one) % &p; // y² - 1
    let v = (&d * &y2 + &one) % &p; // d y² + 1
                                    // x = sqrt(u/v) = u v³ (u v⁷)^((p-5)/8), one exponentiation (RFC 8032 §5.1.3);
                                    // if v x² = -u, multiply by sqrt(-1).
    let v3 = &v * &v % &p * &v % &p;
    let v7 = &v3 * &v3 % &p * &v % &p;
    let mut x =
        &u * &v3 % &p * (&u * &v7 % &p).modpow(&((&p - BigUint::from(5u8)) >> 3u32), &p) % &p;
    if &v * &x % &p * &x % &p != u {
        x = x * sqrt_m1 % &p;
    }
    let odd = x.bit(0) as u8;
    if odd != sign && x != BigUint::from(0u8) {
        x = &p - x;
    }
    let mut out = [0u8; 32];
    let le = x.to_bytes_le();
    out[..le.len()].copy_from_slice(&le);
    out
}

/// `(int(digest) >> 3)` as 32 big-endian bytes.
fn shift3_be(digest: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u8;
    for (o, &b) in out.iter_mut().zip(digest.iter()) {
        *o = (b >> 3) | carry;
        carry = b << 5;
    }
    out
}

fn be_to_scalar_mod_order(be: &[u8; 32]) -> Scalar {
    let mut le = *be;
    le.reverse();
    Scalar::from_bytes_mod_order(le)
}

/// `e` = (digest >> 3) mod n.
fn hash_scalar(digest: &[u8; 32]) -> Scalar {
    be_to_scalar_mod_order(&shift3_be(digest))
}

/// A scalar from big-endian bytes if it is in `1..n` (leading zeros allowed, at most 32 bytes
/// after stripping them).
pub(crate) fn scalar_from_be_nonzero(bytes: &[u8]) -> Option<Scalar> {
    let first = bytes.iter().position(|&b| b != 0)?;
    let bytes = &bytes[first..];
    if bytes.len() > 32 {
        return None;
    }
    let mut le = [0u8; 32];
    for (i, &b) in bytes.iter().rev().enumerate() {
        le[i] = b;
    }
    let s: Option<Scalar> = Scalar::from_canonical_bytes(le).into();
    le.zeroize();
    s
}

/// A scalar as big-endian bytes with leading zeros stripped (how libgcrypt prints MPIs).
pub(crate) fn scalar_to_be_stripped(s: &Scalar) -> Vec<u8> {
    let mut be = s.to_bytes();
    be.reverse();
    let first = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    let v = be[first..].to_vec();
    be.zeroize();
    v
}

/// RFC 6979 nonce generator state (HMAC-SHA-256, qlen = 253), as libgcrypt's
/// `_gcry_dsa_gen_rfc6979_k` runs it.
struct Rfc6979 {
    k: [u8; 32],
    v: [u8; 32],
}

impl Drop for Rfc6979 {
    fn drop(&mut self) {
        self.k.zeroize();
        self.v.zeroize();
    }
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl Rfc6979 {
    /// `d` is the secret exactly as libgcrypt holds it (big-endian, not reduced mod n).
    fn new(d: &[u8; 32], digest: &[u8; 32]) -> Self {
        let mut x = *d; // int2octets: big-endian, 32 bytes
        let mut h1 = be_to_scalar_mod_order(&shift3_be(digest)).to_bytes();
        h1.reverse(); // bits2octets(h1)
        let mut st = Rfc6979 { k: [0u8; 32], v: [1u8; 32] };
        st.k = hmac(&st.k, &[&st.v, &[0u8], &x, &h1]);
        st.v = hmac(&st.k, &[&st.v]);
        st.k = hmac(&st.k, &[&st.v, &[1u8], &x, &h1]);
        st.v = hmac(&st.k, &[&st.v]);
        x.zeroize();
        h1.zeroize();
        st
    }

    /// The next candidate `k` in `1..n`.
    fn next_k(&mut self) -> Scalar {
        loop {
            self.v = hmac(&self.k, &[&self.v]);
            let t = shift3_be(&self.v); // bits2int(T) with tlen = 256 ≥ qlen = 253
            let candidate = scalar_from_be_nonzero(&t);
            // Prepare the state for a possible next candidate (RFC 6979 step h.3).
            self.k = hmac(&self.k, &[&self.v, &[0u8]]);
            self.v = hmac(&self.k, &[&self.v]);
            if let Some(k) = candidate {
                return k;
            }
        }
    }
}

/// Sign a 32-byte digest with secret `d` (32 bytes big-endian, as libgcrypt stores it) whose
/// value mod n is `x`; returns `(r, s)`.
pub(crate) fn sign(d: &[u8; 32], x: &Scalar, digest: &[u8; 32]) -> (Scalar, Scalar) {
    let e = hash_scalar(digest);
    let mut gen = Rfc6979::new(d, digest);
    loop {
        let mut k = gen.next_k();
        let point = EdwardsPoint::mul_base(&k);
        let r = Scalar::from_bytes_mod_order(affine_x(&point));
        if r != Scalar::ZERO {
            let s = k.invert() * (e + x * r);
            k.zeroize();
            if s != Scalar::ZERO {
                return (r, s);
            }
        }
        k.zeroize();
    }
}

/// Verify `(r, s)` over `digest` with public point `q`.
pub(crate) fn verify(q: &EdwardsPoint, digest: &[u8; 32], r: &Scalar, s: &Scalar) -> bool {
    if *r == Scalar::ZERO || *s == Scalar::ZERO {
        return false;
    }
    let e = hash_scalar(digest);
    let w = s.invert();
    let u1 = e * w;
    let u2 = r * w;
    let x_point = EdwardsPoint::vartime_double_scalar_mul_basepoint(&u2, q, &u1);
    if x_point == EdwardsPoint::default() {
        return false;
    }
    Scalar::from_bytes_mod_order(affine_x(&x_point)) == *r
}

/// `x·G`.
pub(crate) fn public_point(x: &Scalar) -> EdwardsPoint {
    EdwardsPoint::mul_base(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basepoint() -> EdwardsPoint {
        curve25519_dalek::constants::ED25519_BASEPOINT_POINT
    }

    #[test]
    fn constants() {
        let p = field_p();
        let inv = |v: &BigUint| v.modpow(&(&p - BigUint::from(2u8)), &p);
        let d = (&p - BigUint::from(121_665u32)) * inv(&BigUint::from(121_666u32)) % &p;
        assert_eq!(
            d.to_string(),
            "37095705934669439343138083508754565189542113879843219016388785533085940283555"
        );
        let sqrt_m1 = BigUint::from(2u8).modpow(&((&p - BigUint::from(1u8)) >> 2u32), &p);
        assert_eq!(
            sqrt_m1.to_string(),
            "19681161376707505956807079304988542015446066515923890162744021073123829784752"
        );
    }

    #[test]
    fn random_points_x() {
        // x(P) and x(-P) are negatives; x satisfies the curve equation -x² + y² = 1 + d x² y².
        let p = field_p();
        for i in 1u64..50 {
            let pt = EdwardsPoint::mul_base(&Scalar::from(i * 7919));
            let x = BigUint::from_bytes_le(&affine_x(&pt));
            let neg = BigUint::from_bytes_le(&affine_x(&-pt));
            assert_eq!((&x + &neg) % &p, BigUint::from(0u8));
            let mut yb = pt.compress().to_bytes();
            yb[31] &= 0x7f;
            let y = BigUint::from_bytes_le(&yb);
            let d = BigUint::parse_bytes(
                b"37095705934669439343138083508754565189542113879843219016388785533085940283555",
                10,
            )
            .unwrap();
            let (x2, y2) = (&x * &x % &p, &y * &y % &p);
            assert_eq!((&y2 + &p - &x2) % &p, (BigUint::from(1u8) + &d * &x2 % &p * &y2) % &p);
        }
    }

    #[test]
    fn basepoint_x() {
        // Gx = 15112221349535400772501151409588531511454012693041857206046113283949847762202
        let x = BigUint::from_bytes_le(&affine_x(&basepoint()));
        assert_eq!(
            x.to_string(),
            "15112221349535400772501151409588531511454012693041857206046113283949847762202"
        );
        let neg = BigUint::from_bytes_le(&affine_x(&-basepoint()));
        assert_eq!(neg, field_p() - x);
    }
}
