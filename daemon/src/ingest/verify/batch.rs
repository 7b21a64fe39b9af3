//! The Ed25519 batch equation (pure): several signatures checked with one multi-scalar
//! multiplication, and the prefilters that keep out of it every signature on which it could
//! disagree with ring, the contract's reference verifier.
//!
//! A signature `(R, S)` by key `A` over `M` is valid for ring when `S < ℓ`, `R` is the canonical
//! encoding of `[S]B − [h]A` with `h = SHA-512(R ‖ A ‖ M) mod ℓ` (the cofactorless equation).
//! The batch checks, with secret random 128-bit coefficients `z_i`,
//!
//! ```text
//!     Σ [z_i] R_i  +  Σ_keys [Σ_{i: A_i = A} z_i·h_i] A  −  [Σ z_i·S_i] B  =  identity
//! ```
//!
//! which holds when every signature is valid, and otherwise fails except with probability
//! about 2⁻¹²⁸, with one exception discussed below. Signatures of the same key share one `A`
//! term, so a batch of `n` from one producer key costs a multi-scalar multiplication of `n + 2`
//! points. The coefficients come from the operating system's generator per batch; they are not
//! derived from the batch's contents (as ed25519-dalek 2's `verify_batch` does with a
//! transcript), so no producer can predict or grind them.
//!
//! Where the batch and ring could disagree, and what keeps them apart:
//! - `S ≥ ℓ` (non-canonical S): ring refuses; such a signature never enters a batch.
//! - non-canonical `R` (y ≥ p, or x = 0 with the sign bit set): ring compares encodings and
//!   refuses; never batched (y ≥ p by its bytes; the x = 0 points are of small order, below).
//! - `R` not on the curve: never batched.
//! - `R` of small order: never batched (ring decides; it accepts only the identity, when
//!   `[S]B = [h]A`).
//! - `A` non-canonical, of small order, or with a torsion component: refused in the
//!   configuration (`config::parse_ed25519_public`), so never seen here.
//! - `R` of mixed order, `R = R' + T` with `T ≠ 0` of order 2, 4 or 8 and `[S]B − [h]A = R'`:
//!   ring refuses (the encodings differ). Split the batch sum into its prime-order and torsion
//!   parts: the prime-order part is zero; the torsion part is `Σ z_i·T_i`, which vanishes
//!   exactly when `Σ (z_i mod 8)·t_i ≡ 0 (mod 8)` (writing `T_i = [t_i]G` for a generator `G`
//!   of the 8-torsion). With uniform secret `z_i` that has probability `1/k`, `k` the largest
//!   order among the `T_i`: at most 1/2 per attempt. Making this exact needs a prime-order
//!   subgroup check of every `R` (a scalar multiplication by ℓ, about 0.6 of a ring
//!   verification measured here), which would cancel the gain of batching; a cofactored batch
//!   equation would be worse (it always accepts these). Such a signature cannot be produced
//!   without the producer's private key (R' is fixed by `S`, `h` and the key, and `h` depends on
//!   `R`), honest signers never produce one, and it gives its maker nothing the same key could
//!   not sign properly: replay protection keys on (timestamp, nonce), never on the signature
//!   bytes, and the signature is not stored. `signature_verification = "single"` gives ring's
//!   verdict on every signature.

use std::iter::once;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};

/// Producer keys decoded for the equation; a handful at most (active, next, after a reload).
#[derive(Default)]
pub(crate) struct KeyCache {
    keys: Vec<([u8; 32], Option<EdwardsPoint>)>,
}

impl KeyCache {
    const MAX: usize = 8;

    /// The point of `key`, or `None` when it must not enter a batch (not a canonical point of
    /// the prime-order subgroup; the configuration refuses such keys anyway).
    pub(crate) fn point(&mut self, key: &[u8; 32]) -> Option<EdwardsPoint> {
        if let Some((_, p)) = self.keys.iter().find(|(k, _)| k == key) {
            return *p;
        }
        let p = CompressedEdwardsY(*key)
            .decompress()
            .filter(|p| p.compress().0 == *key && p.is_torsion_free() && !p.is_small_order());
        if self.keys.len() == Self::MAX {
            self.keys.remove(0);
        }
        self.keys.push((*key, p));
        p
    }
}

/// `true` when the 32 bytes of `R` hold a y coordinate below p = 2²⁵⁵ − 19 (the sign bit
/// aside). The other non-canonical encodings (x = 0 with the sign bit set) are small-order
/// points, which [`Equation::push`] turns away after decompression.
pub(crate) fn y_is_canonical(r: &[u8; 32]) -> bool {
    // y ≥ p only when y's 255 bits are 0x7fff…ffed or more.
    !(r[31] & 0x7f == 0x7f && r[1..31].iter().all(|&b| b == 0xff) && r[0] >= 0xed)
}

/// The parts of one signature ready for the equation, or `None` when it must be verified
/// singly with ring: `S ≥ ℓ`, `R` not canonical, not on the curve or of small order.
fn decode(sig: &[u8; 64]) -> Option<(EdwardsPoint, Scalar)> {
    let (r, s) = sig.split_at(32);
    let r: [u8; 32] = r.try_into().ok()?;
    let s: [u8; 32] = s.try_into().ok()?;
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s))?;
    if !y_is_canonical(&r) {
        return None;
    }
    let r = CompressedEdwardsY(r).decompress()?;
    if r.is_small_order() {
        return None;
    }
    Some((r, s))
}

/// `h = SHA-512(R ‖ A ‖ M) mod ℓ`.
fn challenge(r: &[u8], key: &[u8; 32], msg: &[u8]) -> Scalar {
    let mut d = ring::digest::Context::new(&ring::digest::SHA512);
    d.update(r);
    d.update(key);
    d.update(msg);
    let mut wide = [0u8; 64];
    wide.copy_from_slice(d.finish().as_ref());
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// One batch being assembled; the buffers are reused from batch to batch.
#[derive(Default)]
pub(crate) struct Equation {
    /// `Σ z_i·S_i`.
    b: Scalar,
    /// Each distinct key with `Σ z_i·h_i` of its signatures.
    keys: Vec<(EdwardsPoint, [u8; 32], Scalar)>,
    /// `R_i` with `z_i`.
    rs: Vec<(EdwardsPoint, Scalar)>,
}

impl Equation {
    pub(crate) fn clear(&mut self) {
        self.b = Scalar::ZERO;
        self.keys.clear();
        self.rs.clear();
    }

    /// Signatures in the equation.
    pub(crate) fn len(&self) -> usize {
        self.rs.len()
    }

    /// Add the signature `sig` of `msg` by `key` (whose point is `a`) with the secret
    /// coefficient `z`. `false`: it was not added and must be verified singly.
    pub(crate) fn push(
        &mut self,
        key: &[u8; 32],
        a: EdwardsPoint,
        msg: &[u8],
        sig: &[u8; 64],
        z: u128,
    ) -> bool {
        let Some((r, s)) = decode(sig) else {
            return false;
        };
        let z = Scalar::from(z);
        let h = challenge(&sig[..32], key, msg);
        self.b += z * s;
        match self.keys.iter_mut().find(|(_, k, _)| k == key) {
            Some((_, _, c)) => *c += z * h,
            None => self.keys.push((a, *key, z * h)),
        }
        self.rs.push((r, z));
        true
    }

    /// Whether every signature added is valid (see the module documentation for the one
    /// kind of invalid signature this can miss, with probability at most 1/2).
    pub(crate) fn holds(&self) -> bool {
        // R_i keep their coefficient z_i < 2¹²⁸ as is (not reduced mod ℓ as −z_i would be),
        // so the torsion of a mixed-order R meets exactly z_i mod 8.
        let scalars = once(-self.b)
            .chain(self.keys.iter().map(|(_, _, c)| *c))
            .chain(self.rs.iter().map(|(_, z)| *z));
        let points = once(ED25519_BASEPOINT_POINT)
            .chain(self.keys.iter().map(|(a, _, _)| *a))
            .chain(self.rs.iter().map(|(r, _)| *r));
        EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_identity()
    }
}
