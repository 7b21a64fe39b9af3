//! The audit log's RFC 6962 Merkle tree (CONTRACT.md §6.5): hashing, the stored-hash layout,
//! the append frontier, tree hashes, and inclusion and consistency proofs.
//!
//! The layout and the proof algorithms are those of Go's `golang.org/x/mod/sumdb/tlog`, so
//! proofs made here are checked unchanged by `tlog.CheckRecord` / `tlog.CheckTree` (the e2e
//! interoperability test runs exactly that). Every completed subtree hash has one *stored
//! index*: record `n` adds its leaf hash plus one hash per subtree it completes, so appending
//! writes under two hashes on average, a tree hash reads at most `1 + log₂ n` of them, and
//! proofs read `O(log n)`. Where the Go code panics on a caller's bad input this returns an
//! error.
//!
//! Written here rather than taken from a crate: the Rust ports (`tlog_tiles`) also bring a URL
//! parser and ICU tables into the appliance for tile paths the gateway does not serve; the
//! arithmetic below is small and is checked against Go's implementation and RFC 6962 vectors.

use sha2::{Digest, Sha256};

/// A SHA-256 tree hash.
pub type Hash = [u8; 32];

/// The hash of the empty tree (RFC 6962: `SHA-256("")`).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Why a tree computation or proof check failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The arguments do not describe a valid request (index outside the tree, sizes reversed).
    #[error("{0}")]
    BadRequest(String),
    /// A proof does not verify.
    #[error("the proof does not verify")]
    ProofFailed,
    /// A stored hash is missing: its entries were pruned (or the table is damaged).
    #[error("stored tree hash {0} is not available (pruned or missing)")]
    Missing(u64),
    /// Reading stored hashes failed.
    #[error("reading stored tree hashes failed: {0}")]
    Read(String),
}

/// Leaf hash: `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    leaf_hash_parts(&[data])
}

/// Leaf hash of `parts` concatenated.
pub fn leaf_hash_parts(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Interior node hash: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = 1;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    Sha256::digest(buf).into()
}

/// The stored index of the hash of subtree `n` at `level` (leaves `[n·2^level, (n+1)·2^level)`).
pub fn stored_hash_index(level: u32, mut n: u64) -> u64 {
    for _ in 0..level {
        n = 2 * n + 1;
    }
    let mut i = 0u64;
    while n > 0 {
        i += n;
        n >>= 1;
    }
    i + u64::from(level)
}

/// How many hashes are stored for a tree of `n` records.
pub fn stored_hash_count(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    stored_hash_index(0, n - 1) + 1 + u64::from((n - 1).trailing_ones())
}

/// The largest power of two strictly below `n` (`n ≥ 2`), and its exponent.
fn maxpow2(n: u64) -> (u64, u32) {
    let mut l = 0u32;
    while (1u64 << (l + 1)) < n {
        l += 1;
    }
    (1u64 << l, l)
}

/// Something that returns stored hashes by index (the database, or memory).
pub trait HashSource {
    /// The hashes at `indexes`, in that order.
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TreeError>;
}

impl HashSource for [Hash] {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TreeError> {
        indexes
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.get(i))
                    .copied()
                    .ok_or(TreeError::Missing(i))
            })
            .collect()
    }
}

fn bad(msg: impl Into<String>) -> TreeError {
    TreeError::BadRequest(msg.into())
}

/// The right edge of the tree: the roots of its maximal perfect subtrees, largest first.
/// Enough to append a record and to compute the current root without reading storage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of a tree of `size` records, read from its stored hashes.
    pub fn load(size: u64, src: &(impl HashSource + ?Sized)) -> Result<Self, TreeError> {
        let mut indexes = Vec::new();
        let mut lo = 0u64;
        for level in (0..64u32).rev() {
            if size & (1u64 << level) != 0 {
                indexes.push(stored_hash_index(level, lo >> level));
                lo += 1u64 << level;
            }
        }
        let nodes = src.read_hashes(&indexes)?;
        Ok(Self { size, nodes })
    }

    /// A frontier from its parts: `nodes` are the roots of the maximal perfect subtrees of
    /// a tree of `size` records, largest first. `None` when their number does not fit.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (nodes.len() == size.count_ones() as usize).then_some(Self { size, nodes })
    }

    /// The roots of the maximal perfect subtrees, largest first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Number of records.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append a record with leaf hash `leaf`; push the hashes it stores (stored indexes
    /// `stored_hash_count(size) ..`) onto `out`.
    pub fn append(&mut self, leaf: Hash, out: &mut Vec<Hash>) {
        let mut h = leaf;
        out.push(h);
        for _ in 0..self.size.trailing_ones() {
            // The frontier always holds one node per set bit of `size`; the lowest set bits
            // are the subtrees this record completes.
            let Some(left) = self.nodes.pop() else { break };
            h = node_hash(&left, &h);
            out.push(h);
        }
        self.nodes.push(h);
        self.size += 1;
    }

    /// The tree's root hash.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(last) = it.next() else {
            return EMPTY_ROOT;
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// Stored indexes of the maximal subtrees that make up leaves `[lo, hi)`.
fn sub_tree_index(mut lo: u64, hi: u64, need: &mut Vec<u64>) -> Result<(), TreeError> {
    while lo < hi {
        let (k, level) = maxpow2(hi - lo + 1);
        if lo & (k - 1) != 0 {
            return Err(bad("unaligned subtree"));
        }
        need.push(stored_hash_index(level, lo >> level));
        lo += k;
    }
    Ok(())
}

/// The hash of leaves `[lo, hi)` from the hashes `sub_tree_index` asked for; consumes them.
fn sub_tree_hash(mut lo: u64, hi: u64, hashes: &mut &[Hash]) -> Result<Hash, TreeError> {
    let mut count = 0usize;
    while lo < hi {
        let (k, _) = maxpow2(hi - lo + 1);
        count += 1;
        lo += k;
    }
    if count == 0 || hashes.len() < count {
        return Err(bad("subtree hash count"));
    }
    let (mine, rest) = hashes.split_at(count);
    *hashes = rest;
    let mut h = mine[count - 1];
    for left in mine[..count - 1].iter().rev() {
        h = node_hash(left, &h);
    }
    Ok(h)
}

/// The root of the first `n` records.
pub fn tree_hash(n: u64, src: &(impl HashSource + ?Sized)) -> Result<Hash, TreeError> {
    if n == 0 {
        return Ok(EMPTY_ROOT);
    }
    let mut need = Vec::new();
    sub_tree_index(0, n, &mut need)?;
    let hashes = src.read_hashes(&need)?;
    let mut rest = hashes.as_slice();
    sub_tree_hash(0, n, &mut rest)
}

fn leaf_proof_index(lo: u64, hi: u64, n: u64, need: &mut Vec<u64>) -> Result<(), TreeError> {
    if !(lo <= n && n < hi) {
        return Err(bad("leaf outside the subtree"));
    }
    if lo + 1 == hi {
        return Ok(());
    }
    let (k, _) = maxpow2(hi - lo);
    if n < lo + k {
        leaf_proof_index(lo, lo + k, n, need)?;
        sub_tree_index(lo + k, hi, need)
    } else {
        sub_tree_index(lo, lo + k, need)?;
        leaf_proof_index(lo + k, hi, n, need)
    }
}

fn leaf_proof(
    lo: u64,
    hi: u64,
    n: u64,
    hashes: &mut &[Hash],
    out: &mut Vec<Hash>,
) -> Result<(), TreeError> {
    if lo + 1 == hi {
        return Ok(());
    }
    let (k, _) = maxpow2(hi - lo);
    let th = if n < lo + k {
        leaf_proof(lo, lo + k, n, hashes, out)?;
        sub_tree_hash(lo + k, hi, hashes)?
    } else {
        let th = sub_tree_hash(lo, lo + k, hashes)?;
        leaf_proof(lo + k, hi, n, hashes, out)?;
        th
    };
    out.push(th);
    Ok(())
}

/// The inclusion proof of record `n` (0-based) in the tree of `size` records; hashes
/// bottom-up, as RFC 9162 and Go's `tlog.RecordProof` order them.
pub fn prove_record(
    size: u64,
    n: u64,
    src: &(impl HashSource + ?Sized),
) -> Result<Vec<Hash>, TreeError> {
    if n >= size {
        return Err(bad(format!(
            "record {n} is not in a tree of {size} records"
        )));
    }
    let mut need = Vec::new();
    leaf_proof_index(0, size, n, &mut need)?;
    let hashes = src.read_hashes(&need)?;
    let mut rest = hashes.as_slice();
    let mut proof = Vec::with_capacity(need.len());
    leaf_proof(0, size, n, &mut rest, &mut proof)?;
    Ok(proof)
}

fn run_record_proof(p: &[Hash], lo: u64, hi: u64, n: u64, leaf: Hash) -> Result<Hash, TreeError> {
    if lo + 1 == hi {
        return if p.is_empty() {
            Ok(leaf)
        } else {
            Err(TreeError::ProofFailed)
        };
    }
    let Some((last, rest)) = p.split_last() else {
        return Err(TreeError::ProofFailed);
    };
    let (k, _) = maxpow2(hi - lo);
    if n < lo + k {
        Ok(node_hash(
            &run_record_proof(rest, lo, lo + k, n, leaf)?,
            last,
        ))
    } else {
        Ok(node_hash(
            last,
            &run_record_proof(rest, lo + k, hi, n, leaf)?,
        ))
    }
}

/// Check that `proof` shows record `n` with leaf hash `leaf` in the tree of `size` records
/// with root `root`.
pub fn check_record(
    proof: &[Hash],
    size: u64,
    root: &Hash,
    n: u64,
    leaf: &Hash,
) -> Result<(), TreeError> {
    if n >= size {
        return Err(bad(format!(
            "record {n} is not in a tree of {size} records"
        )));
    }
    if proof.len() > 64 {
        return Err(TreeError::ProofFailed);
    }
    if run_record_proof(proof, 0, size, n, *leaf)? == *root {
        Ok(())
    } else {
        Err(TreeError::ProofFailed)
    }
}

fn tree_proof_index(lo: u64, hi: u64, n: u64, need: &mut Vec<u64>) -> Result<(), TreeError> {
    if !(lo < n && n <= hi) {
        return Err(bad("old size outside the subtree"));
    }
    if n == hi {
        return if lo == 0 {
            Ok(())
        } else {
            sub_tree_index(lo, hi, need)
        };
    }
    let (k, _) = maxpow2(hi - lo);
    if n <= lo + k {
        tree_proof_index(lo, lo + k, n, need)?;
        sub_tree_index(lo + k, hi, need)
    } else {
        sub_tree_index(lo, lo + k, need)?;
        tree_proof_index(lo + k, hi, n, need)
    }
}

fn tree_proof(
    lo: u64,
    hi: u64,
    n: u64,
    hashes: &mut &[Hash],
    out: &mut Vec<Hash>,
) -> Result<(), TreeError> {
    if n == hi {
        if lo != 0 {
            out.push(sub_tree_hash(lo, hi, hashes)?);
        }
        return Ok(());
    }
    let (k, _) = maxpow2(hi - lo);
    let th = if n <= lo + k {
        tree_proof(lo, lo + k, n, hashes, out)?;
        sub_tree_hash(lo + k, hi, hashes)?
    } else {
        let th = sub_tree_hash(lo, lo + k, hashes)?;
        tree_proof(lo + k, hi, n, hashes, out)?;
        th
    };
    out.push(th);
    Ok(())
}

/// The consistency proof that the tree of `size` records extends the tree of `old` records.
pub fn prove_tree(
    size: u64,
    old: u64,
    src: &(impl HashSource + ?Sized),
) -> Result<Vec<Hash>, TreeError> {
    if old == 0 || old > size {
        return Err(bad(format!(
            "no consistency proof from size {old} to size {size}: need 1 ≤ from ≤ to"
        )));
    }
    let mut need = Vec::new();
    tree_proof_index(0, size, old, &mut need)?;
    let hashes = src.read_hashes(&need)?;
    let mut rest = hashes.as_slice();
    let mut proof = Vec::with_capacity(need.len());
    tree_proof(0, size, old, &mut rest, &mut proof)?;
    Ok(proof)
}

fn run_tree_proof(
    p: &[Hash],
    lo: u64,
    hi: u64,
    n: u64,
    old: Hash,
) -> Result<(Hash, Hash), TreeError> {
    if n == hi {
        if lo == 0 {
            return if p.is_empty() {
                Ok((old, old))
            } else {
                Err(TreeError::ProofFailed)
            };
        }
        return match p {
            [h] => Ok((*h, *h)),
            _ => Err(TreeError::ProofFailed),
        };
    }
    let Some((last, rest)) = p.split_last() else {
        return Err(TreeError::ProofFailed);
    };
    let (k, _) = maxpow2(hi - lo);
    if n <= lo + k {
        let (oh, th) = run_tree_proof(rest, lo, lo + k, n, old)?;
        Ok((oh, node_hash(&th, last)))
    } else {
        let (oh, th) = run_tree_proof(rest, lo + k, hi, n, old)?;
        Ok((node_hash(last, &oh), node_hash(last, &th)))
    }
}

/// Check that `proof` shows the tree of `size` records with root `root` extends the tree of
/// `old` records with root `old_root`.
pub fn check_tree(
    proof: &[Hash],
    size: u64,
    root: &Hash,
    old: u64,
    old_root: &Hash,
) -> Result<(), TreeError> {
    if old == 0 || old > size {
        return Err(bad(format!(
            "no consistency proof from size {old} to size {size}: need 1 ≤ from ≤ to"
        )));
    }
    if proof.len() > 128 {
        return Err(TreeError::ProofFailed);
    }
    let (oh, th) = run_tree_proof(proof, 0, size, old, *old_root)?;
    if oh == *old_root && th == *root {
        Ok(())
    } else {
        Err(TreeError::ProofFailed)
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // small test sizes
mod tests {
    use super::*;

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// RFC 6962 test leaves and the roots of their prefixes (as used by the Certificate
    /// Transparency and transparency-dev test suites).
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn build(n: u64) -> (Vec<Hash>, Vec<Hash>, Vec<Hash>) {
        let mut stored = Vec::new();
        let mut roots = Vec::new();
        let mut leaves = Vec::new();
        let mut f = Frontier::default();
        for i in 0..n {
            let leaf = leaf_hash(format!("leaf {i}").as_bytes());
            leaves.push(leaf);
            f.append(leaf, &mut stored);
            assert_eq!(stored.len() as u64, stored_hash_count(i + 1));
            roots.push(f.root());
        }
        (stored, roots, leaves)
    }

    #[test]
    fn leaf_hash_of_parts_is_the_leaf_hash_of_their_concatenation() {
        assert_eq!(leaf_hash_parts(&[b"ab", b"", b"c"]), leaf_hash(b"abc"));
        assert_eq!(leaf_hash_parts(&[]), leaf_hash(b""));
    }

    #[test]
    fn rfc6962_roots() {
        let mut f = Frontier::default();
        assert_eq!(f.root(), EMPTY_ROOT);
        assert_eq!(hex(&EMPTY_ROOT), hex(&Sha256::digest(b"").into()));
        let mut stored = Vec::new();
        for (i, leaf) in LEAVES.iter().enumerate() {
            f.append(leaf_hash(leaf), &mut stored);
            assert_eq!(hex(&f.root()), ROOTS[i], "size {}", i + 1);
            let n = i as u64 + 1;
            assert_eq!(hex(&tree_hash(n, stored.as_slice()).unwrap()), ROOTS[i]);
            assert_eq!(Frontier::load(n, stored.as_slice()).unwrap(), f);
        }
    }

    #[test]
    fn proofs_round_trip_and_reject_flips() {
        let (stored, roots, leaves) = build(70);
        for size in 1..=70u64 {
            let root = &roots[size as usize - 1];
            assert_eq!(&tree_hash(size, stored.as_slice()).unwrap(), root);
            for n in 0..size {
                let mut p = prove_record(size, n, stored.as_slice()).unwrap();
                check_record(&p, size, root, n, &leaves[n as usize]).unwrap();
                for k in 0..p.len() {
                    p[k][0] ^= 1;
                    assert!(check_record(&p, size, root, n, &leaves[n as usize]).is_err());
                    p[k][0] ^= 1;
                }
                if size > 1 {
                    let other = (n + 1) % size;
                    assert!(check_record(&p, size, root, other, &leaves[n as usize]).is_err());
                }
            }
            for old in 1..=size {
                let old_root = &roots[old as usize - 1];
                let mut p = prove_tree(size, old, stored.as_slice()).unwrap();
                check_tree(&p, size, root, old, old_root).unwrap();
                for k in 0..p.len() {
                    p[k][31] ^= 0x80;
                    assert!(check_tree(&p, size, root, old, old_root).is_err());
                    p[k][31] ^= 0x80;
                }
                p.push([0; 32]);
                assert!(check_tree(&p, size, root, old, old_root).is_err());
            }
        }
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        let (stored, roots, leaves) = build(10);
        assert!(matches!(
            prove_record(10, 10, stored.as_slice()),
            Err(TreeError::BadRequest(_))
        ));
        assert!(prove_tree(10, 0, stored.as_slice()).is_err());
        assert!(prove_tree(10, 11, stored.as_slice()).is_err());
        assert!(check_record(&[], 0, &roots[0], 0, &leaves[0]).is_err());
        assert!(check_tree(&[], 3, &roots[2], 4, &roots[3]).is_err());
        assert!(check_tree(&[[0; 32]; 200], 9, &roots[8], 3, &roots[2]).is_err());
        assert!(matches!(
            prove_record(40, 3, stored.as_slice()),
            Err(TreeError::Missing(_))
        ));
        assert!(matches!(
            tree_hash(40, stored.as_slice()),
            Err(TreeError::Missing(_))
        ));
    }

    #[test]
    fn stored_index_layout_matches_go() {
        // Values from Go's StoredHashIndex / StoredHashCount.
        assert_eq!(stored_hash_index(0, 0), 0);
        assert_eq!(stored_hash_index(0, 1), 1);
        assert_eq!(stored_hash_index(1, 0), 2);
        assert_eq!(stored_hash_index(0, 2), 3);
        assert_eq!(stored_hash_index(0, 3), 4);
        assert_eq!(stored_hash_index(1, 1), 5);
        assert_eq!(stored_hash_index(2, 0), 6);
        assert_eq!(stored_hash_count(4), 7);
        assert_eq!(stored_hash_count(5), 8);
    }
}
