//! `vvctl update apply` on an A/B disk image: a GPT made by sfdisk, a bundle signed by openssl
//! the way image/build signs it. Bad signatures, older versions and changed files are refused
//! before a byte of the disk or the ESP changes; a good bundle lands in the free slot, which
//! gets the new root hash's partition UUIDs, and its UKI appears on the ESP with a boot counter.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use vvgate_e2e::*;

const H1: &str = "1111111111111111aaaaaaaaaaaaaaaa2222222222222222bbbbbbbbbbbbbbbb";
const H2: &str = "3333333333333333cccccccccccccccc4444444444444444dddddddddddddddd";

fn sh(cmd: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut c = Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    c.stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn uuid(h: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A disk like image/build's: ESP, root-A, verity-A, root-B, verity-B, data; slot A holds H1.
fn make_disk(path: &Path) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(24 << 20)
        .unwrap();
    let script = format!(
        "label: gpt
size=2MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP
size=6MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid={}, name=vvgate_0.1.0
size=1MiB, type=2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5, uuid={}, name=vvgate_0.1.0_verity
size=6MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=_empty
size=1MiB, type=2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5, name=_empty_verity
size=4MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=vvgate-data
",
        uuid(&H1[..32]),
        uuid(&H1[32..])
    );
    sh("sfdisk", &["-q", path.to_str().unwrap()], Some(&script));
}

/// (start in bytes, uuid, name) of each partition, as sfdisk reads them back.
fn parts(disk: &Path) -> Vec<(u64, String, String)> {
    let j: serde_json::Value =
        serde_json::from_str(&sh("sfdisk", &["-J", disk.to_str().unwrap()], None)).unwrap();
    j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * 512,
                p["uuid"].as_str().unwrap_or("").to_lowercase(),
                p["name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

struct Setup {
    dir: PathBuf,
    disk: PathBuf,
    esp: PathBuf,
    key: PathBuf,
    public: PathBuf,
    version: PathBuf,
}

impl Setup {
    fn new(tag: &str) -> Self {
        let dir = temp_dir(tag);
        let disk = dir.join("disk.raw");
        make_disk(&disk);
        let esp = dir.join("esp");
        std::fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
        // The running slot's UKI, and a stale one that boots slot B (it must go first).
        std::fs::write(
            esp.join("EFI/Linux/vvgate_0.1.0.efi"),
            format!("MZ ro roothash={H1} quiet"),
        )
        .unwrap();
        std::fs::write(
            esp.join("EFI/Linux/vvgate_0.0.9.efi"),
            format!("MZ ro roothash={} quiet", "9".repeat(64)),
        )
        .unwrap();
        let key = dir.join("update.key");
        sh(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "ed25519",
                "-out",
                key.to_str().unwrap(),
            ],
            None,
        );
        let der = Command::new("openssl")
            .args([
                "pkey",
                "-in",
                key.to_str().unwrap(),
                "-pubout",
                "-outform",
                "DER",
            ])
            .output()
            .unwrap()
            .stdout;
        let public = dir.join("update.pub");
        std::fs::write(&public, &der[der.len() - 32..]).unwrap();
        let version = dir.join("version");
        std::fs::write(&version, "0.1.0\n").unwrap();
        Self {
            dir,
            disk,
            esp,
            key,
            public,
            version,
        }
    }

    /// A bundle for root hash `h` at `version`, signed with `key`.
    fn bundle(&self, name: &str, version: &str, h: &str, key: &Path) -> PathBuf {
        let b = self.dir.join(name);
        std::fs::create_dir_all(&b).unwrap();
        let mut rng = vvgate::ids::Random::new();
        let mut root = vec![0u8; 3 << 20];
        for chunk in root.chunks_mut(16) {
            let u = rng.uuid_v4();
            chunk.copy_from_slice(&u[..chunk.len()]);
        }
        std::fs::write(b.join("root.img"), &root).unwrap();
        std::fs::write(b.join("root.verity"), vec![0x5a; 70_000]).unwrap();
        std::fs::write(
            b.join("uki.efi"),
            format!("MZ signed ro roothash={h} systemd.verity_root_options=panic-on-corruption"),
        )
        .unwrap();
        let entry = |n: &str| {
            let bytes = std::fs::read(b.join(n)).unwrap();
            format!(
                "\"{n}\": {{\"sha256\": \"{}\", \"size\": {}}}",
                hex(&Sha256::digest(&bytes)),
                bytes.len()
            )
        };
        let m = format!(
            "{{\n  \"format\": 1,\n  \"product\": \"vvgate\",\n  \"version\": \"{version}\",\n  \"roothash\": \"{h}\",\n  \"files\": {{ {}, {}, {} }}\n}}\n",
            entry("root.img"),
            entry("root.verity"),
            entry("uki.efi")
        );
        std::fs::write(b.join("manifest.json"), m).unwrap();
        sh(
            "openssl",
            &[
                "pkeyutl",
                "-sign",
                "-rawin",
                "-inkey",
                key.to_str().unwrap(),
                "-in",
                b.join("manifest.json").to_str().unwrap(),
                "-out",
                b.join("manifest.json.sig").to_str().unwrap(),
            ],
            None,
        );
        b
    }

    fn apply(&self, bundle: &Path, running: &str) -> (i32, String, String) {
        vvctl(&[
            "update",
            "apply",
            bundle.to_str().unwrap(),
            "--disk",
            self.disk.to_str().unwrap(),
            "--esp",
            self.esp.to_str().unwrap(),
            "--key",
            self.public.to_str().unwrap(),
            "--version-file",
            self.version.to_str().unwrap(),
            "--running-roothash",
            running,
        ])
    }

    fn verify(&self, bundle: &Path) -> (i32, String, String) {
        vvctl(&[
            "update",
            "verify",
            bundle.to_str().unwrap(),
            "--key",
            self.public.to_str().unwrap(),
            "--version-file",
            self.version.to_str().unwrap(),
        ])
    }

    fn state(&self) -> (String, Vec<String>) {
        let disk = hex(&Sha256::digest(std::fs::read(&self.disk).unwrap()));
        let mut esp: Vec<String> = std::fs::read_dir(self.esp.join("EFI/Linux"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        esp.sort();
        (disk, esp)
    }
}

#[test]
fn refused_bundles_change_nothing() {
    let s = Setup::new("update-refused");
    let before = s.state();
    let good = s.bundle("good", "0.2.0", H2, &s.key);

    // A flipped byte in the signed manifest.
    let bad_sig = s.bundle("badsig", "0.2.0", H2, &s.key);
    let mut m = std::fs::read(bad_sig.join("manifest.json")).unwrap();
    let i = m.iter().position(|&c| c == b'2').unwrap();
    m[i] = b'3';
    std::fs::write(bad_sig.join("manifest.json"), m).unwrap();
    // Signed by someone else's key.
    let other = s.dir.join("other.key");
    sh(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            other.to_str().unwrap(),
        ],
        None,
    );
    let foreign = s.bundle("foreign", "0.2.0", H2, &other);
    // Older, and equal to the running version.
    let older = s.bundle("older", "0.0.5", H2, &s.key);
    let same = s.bundle("same", "0.1.0", H2, &s.key);
    // A changed root image under a good signature.
    let changed = s.bundle("changed", "0.2.0", H2, &s.key);
    let mut r = std::fs::read(changed.join("root.img")).unwrap();
    r[1 << 20] ^= 0x01;
    std::fs::write(changed.join("root.img"), r).unwrap();
    // The running image again under a newer version.
    let reinstall = s.bundle("reinstall", "0.3.0", H1, &s.key);

    for (b, code, want) in [
        (
            &bad_sig,
            65,
            "refused: manifest.json does not verify with the update key",
        ),
        (
            &foreign,
            65,
            "refused: manifest.json does not verify with the update key",
        ),
        (
            &older,
            65,
            "refused: bundle version 0.0.5 is not newer than the running 0.1.0",
        ),
        (
            &same,
            65,
            "refused: bundle version 0.1.0 is not newer than the running 0.1.0",
        ),
        (
            &changed,
            65,
            "refused: root.img: its SHA-256 differs from the manifest's",
        ),
        (&reinstall, 65, "already installed"),
    ] {
        let (rc, out, err) = s.apply(b, H1);
        assert_eq!(rc, code, "{}: {out}{err}", b.display());
        assert!(err.contains(want), "{}: {err}", b.display());
        assert_eq!(
            s.state(),
            before,
            "{} changed the disk or the ESP",
            b.display()
        );
    }
    // `verify` says the same without a disk.
    let (rc, _, err) = s.verify(&bad_sig);
    assert_eq!(rc, 65, "{err}");
    // A running root that is on neither slot: nothing is guessed.
    let (rc, _, err) = s.apply(&good, &"7".repeat(64));
    assert_eq!(rc, 74, "{err}");
    assert!(err.contains("is on no slot of this disk"), "{err}");
    assert_eq!(s.state(), before);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_good_bundle_lands_in_the_free_slot_and_becomes_the_next_boot() {
    let s = Setup::new("update-good");
    let b = s.bundle("good", "0.2.0", H2, &s.key);
    let (rc, _, err) = s.verify(&b);
    assert_eq!(rc, 0, "{err}");
    let slot_a_before = parts(&s.disk)[1..3].to_vec();
    let (rc, out, err) = s.apply(&b, H1);
    assert_eq!(rc, 0, "{out}{err}");
    assert!(
        out.contains("running slot A, installing into slot B"),
        "{out}"
    );

    let p = parts(&s.disk);
    assert_eq!(
        p[1..3].to_vec(),
        slot_a_before,
        "the running slot was touched"
    );
    assert_eq!(
        (p[3].1.as_str(), p[3].2.as_str()),
        (uuid(&H2[..32]).as_str(), "vvgate_0.2.0")
    );
    assert_eq!(
        (p[4].1.as_str(), p[4].2.as_str()),
        (uuid(&H2[32..]).as_str(), "vvgate_0.2.0_verity")
    );
    let disk = std::fs::read(&s.disk).unwrap();
    for (start, file) in [(p[3].0, "root.img"), (p[4].0, "root.verity")] {
        let want = std::fs::read(b.join(file)).unwrap();
        let start = usize::try_from(start).unwrap();
        assert!(
            disk[start..start + want.len()] == want[..],
            "{file} is not in its partition"
        );
    }
    let (_, esp) = s.state();
    assert_eq!(
        esp,
        ["vvgate_0.1.0.efi", "vvgate_0.2.0+3.efi"],
        "stale UKI removed, new one counted"
    );
    assert_eq!(
        std::fs::read(s.esp.join("EFI/Linux/vvgate_0.2.0+3.efi")).unwrap(),
        std::fs::read(b.join("uki.efi")).unwrap()
    );

    // Booted into 0.2.0 (slot B), the next update goes to slot A and drops 0.1.0's UKI.
    std::fs::write(&s.version, "0.2.0").unwrap();
    let h3 = "5".repeat(64);
    let b3 = s.bundle("next", "0.3.0", &h3, &s.key);
    let (rc, out, err) = s.apply(&b3, H2);
    assert_eq!(rc, 0, "{out}{err}");
    assert!(
        out.contains("running slot B, installing into slot A"),
        "{out}"
    );
    let p = parts(&s.disk);
    assert_eq!(p[1].1, uuid(&h3[..32]));
    assert_eq!(p[3].1, uuid(&H2[..32]), "slot B keeps the running root");
    let (_, esp) = s.state();
    assert_eq!(esp, ["vvgate_0.2.0+3.efi", "vvgate_0.3.0+3.efi"]);
    let _ = std::fs::remove_dir_all(&s.dir);
}
