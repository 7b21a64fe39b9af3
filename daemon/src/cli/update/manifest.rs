//! The update bundle: a manifest signed with the update key (Ed25519) and the files it names.
//!
//! A bundle is a directory written by `image/build`:
//! `manifest.json`, `manifest.json.sig` (64 raw bytes, Ed25519 over the manifest's bytes as
//! they are), `root.img` (the squashfs root), `root.verity` (its dm-verity hash tree) and
//! `uki.efi` (the signed unified kernel image whose command line pins `roothash`).
//! Nothing in the manifest is looked at before its signature verified.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::UpdateError;

/// The files of a bundle, in the order they are checked.
pub const FILES: [&str; 3] = ["root.img", "root.verity", "uki.efi"];
/// A manifest is a few hundred bytes; anything larger is not one.
const MAX_MANIFEST: u64 = 64 * 1024;

/// An image version, `major.minor.patch`, ordered numerically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.trim().split('.').map(|p| {
            // No signs, no leading zeros beyond "0": one spelling per version.
            if p.is_empty()
                || !p.bytes().all(|b| b.is_ascii_digit())
                || (p.len() > 1 && p.starts_with('0'))
            {
                None
            } else {
                p.parse::<u32>().ok()
            }
        });
        let v = Version(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(v)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    format: u32,
    product: String,
    version: String,
    roothash: String,
    files: BTreeMap<String, RawFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    sha256: String,
    size: u64,
}

/// One file of the bundle as the signed manifest describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub name: &'static str,
    pub sha256: [u8; 32],
    pub size: u64,
}

/// A manifest whose signature verified and whose fields are well formed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub version: Version,
    /// The dm-verity root hash of `root.img` (64 lowercase hex).
    pub roothash: String,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let v = data_encoding::HEXLOWER.decode(s.as_bytes()).ok()?;
    v.try_into().ok()
}

/// Check the signature over `bytes` with the raw 32-byte Ed25519 `public_key`, then parse.
pub fn verify(bytes: &[u8], sig: &[u8], public_key: &[u8; 32]) -> Result<Manifest, UpdateError> {
    if sig.len() != 64 {
        return Err(UpdateError::Signature(format!(
            "manifest.json.sig has {} bytes, an Ed25519 signature has 64",
            sig.len()
        )));
    }
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(bytes, sig)
        .map_err(|_| {
            UpdateError::Signature("manifest.json does not verify with the update key".into())
        })?;
    parse(bytes)
}

/// Parse a manifest (after its signature verified).
pub fn parse(bytes: &[u8]) -> Result<Manifest, UpdateError> {
    let bad = |m: String| UpdateError::Manifest(m);
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
    if raw.format != 1 {
        return Err(bad(format!(
            "format {} (this vvctl reads format 1)",
            raw.format
        )));
    }
    if raw.product != "vvgate" {
        return Err(bad(format!("product {:?} is not vvgate", raw.product)));
    }
    let version = Version::parse(&raw.version).ok_or_else(|| {
        bad(format!(
            "version {:?} is not major.minor.patch",
            raw.version
        ))
    })?;
    if hex32(&raw.roothash).is_none() {
        return Err(bad(format!(
            "roothash {:?} is not 64 lowercase hex",
            raw.roothash
        )));
    }
    if let Some(extra) = raw.files.keys().find(|k| !FILES.contains(&k.as_str())) {
        return Err(bad(format!("unknown file {extra:?}")));
    }
    let mut files = Vec::with_capacity(FILES.len());
    for name in FILES {
        let f = raw
            .files
            .get(name)
            .ok_or_else(|| bad(format!("files.{name} is missing")))?;
        let sha256 = hex32(&f.sha256)
            .ok_or_else(|| bad(format!("files.{name}.sha256 is not 64 lowercase hex")))?;
        if f.size == 0 {
            return Err(bad(format!("files.{name}.size is 0")));
        }
        files.push(FileEntry {
            name,
            sha256,
            size: f.size,
        });
    }
    Ok(Manifest {
        version,
        roothash: raw.roothash,
        files,
    })
}

/// SHA-256 of the first `len` bytes of `r` (fewer if it ends first), and how many were read.
pub fn sha256_of(r: &mut impl Read, len: u64) -> std::io::Result<([u8; 32], u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok((h.finalize().into(), len - left))
}

/// A bundle directory whose manifest verified and whose files match it.
#[derive(Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Bundle {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, UpdateError> {
    let f = std::fs::File::open(path).map_err(UpdateError::read(path))?;
    let mut v = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut v)
        .map_err(UpdateError::read(path))?;
    if v.len() as u64 > limit {
        return Err(UpdateError::Manifest(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(v)
}

/// Read the update key: 32 raw bytes, or their base64 on one line.
pub fn read_public_key(path: &Path) -> Result<[u8; 32], UpdateError> {
    let raw = read_small(path, 1024)?;
    let decoded = if raw.len() == 32 {
        raw
    } else {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(String::from_utf8_lossy(&raw).trim())
            .unwrap_or_default()
    };
    decoded.try_into().map_err(|_| UpdateError::Key {
        path: path.display().to_string(),
        detail: "not an Ed25519 public key (32 raw bytes or their base64)".into(),
    })
}

/// Verify a bundle: the signature first, then every file's size and SHA-256, then that the
/// kernel image pins the manifest's root hash.
pub fn open(dir: &Path, public_key: &[u8; 32]) -> Result<Bundle, UpdateError> {
    let bytes = read_small(&dir.join("manifest.json"), MAX_MANIFEST)?;
    let sig = read_small(&dir.join("manifest.json.sig"), 1024)?;
    let manifest = verify(&bytes, &sig, public_key)?;
    for f in &manifest.files {
        let path = dir.join(f.name);
        let mut file = std::fs::File::open(&path).map_err(UpdateError::read(&path))?;
        let size = file.metadata().map_err(UpdateError::read(&path))?.len();
        if size != f.size {
            return Err(UpdateError::FileChanged {
                name: f.name,
                detail: format!("{size} bytes, the manifest says {}", f.size),
            });
        }
        let (digest, _) = sha256_of(&mut file, size).map_err(UpdateError::read(&path))?;
        if digest != f.sha256 {
            return Err(UpdateError::FileChanged {
                name: f.name,
                detail: "its SHA-256 differs from the manifest's".into(),
            });
        }
    }
    // The UKI's command line carries `roothash=<hex>`: it must be the manifest's, or the new
    // slot could never be opened by the kernel that is meant to boot it.
    let uki =
        std::fs::read(dir.join("uki.efi")).map_err(UpdateError::read(&dir.join("uki.efi")))?;
    let needle = format!("roothash={} ", manifest.roothash);
    if !uki.windows(needle.len()).any(|w| w == needle.as_bytes()) {
        return Err(UpdateError::FileChanged {
            name: "uki.efi",
            detail: "its command line does not carry the manifest's roothash".into(),
        });
    }
    Ok(Bundle {
        dir: dir.to_path_buf(),
        manifest,
    })
}
