//! The stable hash and the deterministic logarithm behind the rendezvous score.
//!
//! Everything here uses integer arithmetic and the IEEE 754 basic operations (`+ − × ÷`, which
//! are correctly rounded, and Rust never contracts them into fused operations), so the result is
//! bit-for-bit the same on every platform with IEEE 754 binary64 arithmetic (every 64-bit target;
//! not x87-only targets such as i586) and every compiler version. `f64::ln` is not used: its
//! precision is platform-dependent. Changing anything here re-places replicas in a running
//! lattice whose nodes run different versions, so the domain tags carry a version (`v1`).

use sha2::{Digest, Sha256};

/// Domain of a member's key.
const MEMBER_DOMAIN: &[u8] = b"aether-placement/v1/member\0";
/// Domain of a deployment's key.
const DEPLOYMENT_DOMAIN: &[u8] = b"aether-placement/v1/deployment\0";

/// wyhash's first secret (`_wyp[0]`), xored into the deployment key before mixing.
const WY_P0: u64 = 0xa076_1d64_78bd_642f;
/// wyhash's second secret (`_wyp[1]`), xored into the member key before mixing.
const WY_P1: u64 = 0xe703_7ed1_a0b4_28db;

/// `2^-52`.
const TWO_POW_M52: f64 = 1.0 / (1u64 << 52) as f64;

fn key(domain: &[u8], bytes: &[u8]) -> u64 {
    let digest = Sha256::new()
        .chain_update(domain)
        .chain_update(bytes)
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// A member's 64-bit key: the first 8 bytes (little endian) of
/// SHA-256(`"aether-placement/v1/member\0"` ‖ id).
pub(crate) fn member_key(id: &[u8; 32]) -> u64 {
    key(MEMBER_DOMAIN, id)
}

/// A deployment's 64-bit key: the first 8 bytes (little endian) of
/// SHA-256(`"aether-placement/v1/deployment\0"` ‖ name).
pub(crate) fn deployment_key(name: &str) -> u64 {
    key(DEPLOYMENT_DOMAIN, name.as_bytes())
}

/// The pair hash: wyhash's `wymix`, the 128-bit product of `(d ⊕ P0)` and `(m ⊕ P1)` folded by
/// xoring its halves.
#[inline]
pub(crate) fn pair(deployment: u64, member: u64) -> u64 {
    let p = u128::from(deployment ^ WY_P0) * u128::from(member ^ WY_P1);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The pair hash as a uniform number in the open interval (0, 1), and `1 − u` alongside it:
/// `u = (⌊h / 2^12⌋ + ½) · 2^-52`, exact in an `f64`.
#[inline]
pub(crate) fn unit(h: u64) -> (f64, f64) {
    let m = h >> 12;
    let u = (m as f64 + 0.5) * TWO_POW_M52;
    let one_minus_u = (((1u64 << 52) - m) as f64 - 0.5) * TWO_POW_M52;
    (u, one_minus_u)
}

/// A lower bound of `(1 − u)·2^52` for the `u` of [`unit`], as an integer-valued `f64`: with
/// `D = 2^52 − ⌊h/2^12⌋`, `1 − u = (D − ½)·2^-52 ≥ (D − 1)·2^-52`.
#[inline]
pub(crate) fn lower_bound_units(h: u64) -> f64 {
    ((1u64 << 52) - (h >> 12) - 1) as i64 as f64
}

/// Multiplier turning [`lower_bound_units`] into a lower bound of the rendezvous key
/// `−ln(u)/w`: `2^-52 / w`, shrunk by a margin that absorbs rounding in [`neg_ln`].
pub(crate) fn bound_scale(inv_w: f64) -> f64 {
    inv_w * TWO_POW_M52 * 0.999
}

/// `−ln(u)` for `u` in (0, 1), by range reduction to a mantissa in [√½, √2) and the series
/// `ln m = 2·atanh(s) = 2(s + s³/3 + … + s¹⁹/19)` with `s = (m − 1)/(m + 1)`, `|s| ≤ 0.172`;
/// relative error below 1e-15. `u` must be a positive normal number.
#[inline]
pub(crate) fn neg_ln(u: f64) -> f64 {
    const LN_2: f64 = std::f64::consts::LN_2;
    const SQRT_2: f64 = std::f64::consts::SQRT_2;
    let bits = u.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > SQRT_2 {
        m *= 0.5;
        exponent += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let tail = 1.0 / 3.0
        + s2 * (1.0 / 5.0
            + s2 * (1.0 / 7.0
                + s2 * (1.0 / 9.0
                    + s2 * (1.0 / 11.0
                        + s2 * (1.0 / 13.0 + s2 * (1.0 / 15.0 + s2 * (1.0 / 17.0 + s2 / 19.0)))))));
    let ln_m = 2.0 * s + 2.0 * s * s2 * tail;
    -(exponent as f64 * LN_2 + ln_m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neg_ln_matches_the_standard_library() {
        let mut h = 0x1234_5678_9abc_def0u64;
        for _ in 0..100_000 {
            h = h
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let (u, one_minus_u) = unit(h);
            assert!(u > 0.0 && u < 1.0);
            assert!((1.0 - u - one_minus_u).abs() <= f64::EPSILON);
            let ours = neg_ln(u);
            let std = -u.ln();
            assert!(
                (ours - std).abs() <= 4.0 * f64::EPSILON * std.max(1e-300),
                "{u}"
            );
            // The bound the candidate filter relies on.
            assert!(ours >= one_minus_u * 0.999);
            assert!(ours >= lower_bound_units(h) * bound_scale(1.0));
        }
        for u in [
            f64::MIN_POSITIVE,
            1e-300,
            0.5,
            // Either side of the range reduction's boundary.
            std::f64::consts::FRAC_1_SQRT_2 * (1.0 - 1e-12),
            std::f64::consts::FRAC_1_SQRT_2 * (1.0 + 1e-12),
            1.0 - f64::EPSILON,
        ] {
            let rel = (neg_ln(u) + u.ln()).abs() / (-u.ln());
            assert!(rel < 1e-14, "{u}: {rel}");
        }
    }

    #[test]
    fn keys_are_stable() {
        // Fixed points: a change here re-places every replica in a running lattice.
        assert_eq!(member_key(&[0; 32]), member_key(&[0; 32]));
        assert_ne!(member_key(&[0; 32]), member_key(&[1; 32]));
        // Cross-checked with Python's hashlib.
        assert_eq!(deployment_key("hello"), 0x46d8_ad50_b93a_12bb);
        assert_eq!(
            pair(deployment_key("hello"), member_key(&[0; 32])),
            0x6558_426d_03de_fbe6
        );
        assert_eq!(unit(0).0, 0.5 * TWO_POW_M52);
        assert_eq!(unit(u64::MAX).1, 0.5 * TWO_POW_M52);
    }
}
