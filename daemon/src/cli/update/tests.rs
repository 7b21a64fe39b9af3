use super::manifest::{self, Version};
use super::*;
use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};

fn key(seed: u8) -> (Ed25519KeyPair, [u8; 32]) {
    let kp = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
    let pk: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
    (kp, pk)
}

const ROOTHASH: &str = "0123456789abcdef0123456789abcdef00112233445566778899aabbccddeeff";

/// A bundle directory with small stand-in files and a manifest signed by `kp`.
fn bundle(dir: &Path, kp: &Ed25519KeyPair, version: &str) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    let files = [
        ("root.img", b"squashfs root".to_vec()),
        ("root.verity", b"verity tree".to_vec()),
        (
            "uki.efi",
            format!("MZ.. ro roothash={ROOTHASH} systemd.verity..").into_bytes(),
        ),
    ];
    let mut entries = Vec::new();
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes).unwrap();
        entries.push(format!(
            "\"{name}\": {{\"sha256\": \"{}\", \"size\": {}}}",
            data_encoding::HEXLOWER.encode(&Sha256::digest(bytes)),
            bytes.len()
        ));
    }
    let m = format!(
        "{{\"format\": 1, \"product\": \"vvgate\", \"version\": \"{version}\", \"roothash\": \"{ROOTHASH}\", \"files\": {{{}}}}}\n",
        entries.join(", ")
    );
    std::fs::write(dir.join("manifest.json"), &m).unwrap();
    std::fs::write(dir.join("manifest.json.sig"), kp.sign(m.as_bytes())).unwrap();
    m.into_bytes()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vvgate-update-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn versions_parse_one_spelling_and_order_numerically() {
    assert_eq!(Version::parse("1.2.3"), Some(Version(1, 2, 3)));
    assert_eq!(Version::parse("0.10.0\n"), Some(Version(0, 10, 0)));
    for bad in [
        "1.2", "1.2.3.4", "01.2.3", "1.-2.3", "1.2.x", "", "1..3", "+1.2.3",
    ] {
        assert_eq!(Version::parse(bad), None, "{bad:?}");
    }
    assert!(Version(0, 10, 0) > Version(0, 9, 9));
    assert!(Version(1, 0, 0) > Version(0, 99, 99));
}

#[test]
fn a_signed_manifest_verifies_and_a_changed_one_does_not() {
    let d = tmp("sig");
    let (kp, pk) = key(1);
    let m = bundle(&d, &kp, "0.2.0");
    let sig = kp.sign(&m);
    let ok = manifest::verify(&m, sig.as_ref(), &pk).unwrap();
    assert_eq!(ok.version, Version(0, 2, 0));
    assert_eq!(ok.roothash, ROOTHASH);
    assert_eq!(ok.files.len(), 3);
    // One flipped bit anywhere in the manifest.
    for i in [0, m.len() / 2, m.len() - 1] {
        let mut bad = m.clone();
        bad[i] ^= 1;
        assert!(matches!(
            manifest::verify(&bad, sig.as_ref(), &pk),
            Err(UpdateError::Signature(_))
        ));
    }
    // Another key, a truncated signature.
    let (_, other) = key(2);
    assert!(matches!(
        manifest::verify(&m, sig.as_ref(), &other),
        Err(UpdateError::Signature(_))
    ));
    let e = manifest::verify(&m, &sig.as_ref()[..63], &pk).unwrap_err();
    assert!(e.to_string().contains("63 bytes"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn malformed_manifests_are_named() {
    let good = r#"{"format":1,"product":"vvgate","version":"1.0.0","roothash":"RH","files":{"root.img":{"sha256":"H","size":1},"root.verity":{"sha256":"H","size":1},"uki.efi":{"sha256":"H","size":1}}}"#
        .replace("RH", ROOTHASH);
    let hashes = |t: &str| t.replace("\"H\"", &format!("\"{}\"", "ab".repeat(32)));
    manifest::parse(hashes(&good).as_bytes()).unwrap();
    let cases = [
        (good.replace("\"format\":1", "\"format\":2"), "format 2"),
        (good.replace("\"vvgate\"", "\"other\""), "product"),
        (good.replace("1.0.0", "1.0"), "major.minor.patch"),
        (good.replace(ROOTHASH, &ROOTHASH.to_uppercase()), "roothash"),
        (good.replace("\"uki.efi\"", "\"kernel\""), "unknown file"),
        (
            good.replace(",\"uki.efi\":{\"sha256\":\"H\",\"size\":1}", ""),
            "files.uki.efi",
        ),
        (good.replace("\"size\":1}}}", "\"size\":0}}}"), "size is 0"),
        (
            good.replace("\"format\":1", "\"format\":1,\"extra\":true"),
            "unknown field",
        ),
        ("[]".to_owned(), "not a manifest"),
    ];
    for (text, want) in cases {
        match manifest::parse(hashes(&text).as_bytes()) {
            Err(UpdateError::Manifest(m)) => assert!(m.contains(want), "{want}: {m}"),
            other => panic!("{want}: {other:?}"),
        }
    }
}

#[test]
fn bundle_files_are_checked_against_the_manifest() {
    let (kp, pk) = key(3);
    let d = tmp("files");
    bundle(&d, &kp, "0.2.0");
    manifest::open(&d, &pk).unwrap();
    // A changed byte, an extra byte, a missing file.
    std::fs::write(d.join("root.img"), b"squashfs rooT").unwrap();
    let e = manifest::open(&d, &pk).unwrap_err();
    assert!(
        e.to_string().contains("root.img: its SHA-256 differs"),
        "{e}"
    );
    std::fs::write(d.join("root.img"), b"squashfs root!").unwrap();
    let e = manifest::open(&d, &pk).unwrap_err();
    assert!(
        e.to_string()
            .contains("root.img: 14 bytes, the manifest says 13"),
        "{e}"
    );
    std::fs::remove_file(d.join("root.img")).unwrap();
    assert!(matches!(
        manifest::open(&d, &pk),
        Err(UpdateError::Read { .. })
    ));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_kernel_image_for_another_root_is_refused() {
    let (kp, pk) = key(4);
    let d = tmp("uki");
    bundle(&d, &kp, "0.2.0");
    // Re-sign a manifest that describes a UKI without the root hash on its command line.
    let uki = b"MZ.. ro roothash=ffff systemd".to_vec();
    std::fs::write(d.join("uki.efi"), &uki).unwrap();
    let m = std::fs::read_to_string(d.join("manifest.json")).unwrap();
    let old = manifest::parse(m.as_bytes()).unwrap();
    let old_uki = old.file("uki.efi").unwrap();
    let m = m
        .replace(
            &data_encoding::HEXLOWER.encode(&old_uki.sha256),
            &data_encoding::HEXLOWER.encode(&Sha256::digest(&uki)),
        )
        .replace(
            &format!("\"size\": {}}}", old_uki.size),
            &format!("\"size\": {}}}", uki.len()),
        );
    std::fs::write(d.join("manifest.json"), &m).unwrap();
    std::fs::write(d.join("manifest.json.sig"), kp.sign(m.as_bytes())).unwrap();
    let e = manifest::open(&d, &pk).unwrap_err();
    assert!(
        e.to_string()
            .contains("uki.efi: its command line does not carry"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn older_or_equal_versions_are_refused() {
    let (kp, pk) = key(5);
    let d = tmp("version");
    bundle(&d, &kp, "0.2.0");
    std::fs::write(d.join("update.pub"), pk).unwrap();
    let system = |running: &str| {
        std::fs::write(d.join("running-version"), running).unwrap();
        SystemArgs {
            key: d.join("update.pub"),
            version_file: d.join("running-version"),
        }
    };
    check(&d, &system("0.1.9\n")).unwrap();
    for running in ["0.2.0", "0.10.0", "1.0.0"] {
        match check(&d, &system(running)) {
            Err(e @ UpdateError::NotNewer { .. }) => {
                assert_eq!(e.exit_code(), crate::exit::DATAERR);
                assert!(e
                    .to_string()
                    .contains(&format!("not newer than the running {running}")));
            }
            other => panic!("{running}: {other:?}"),
        }
    }
    let e = check(&d, &system("latest")).unwrap_err();
    assert!(matches!(e, UpdateError::Running(_)), "{e}");
    // The key may be base64 too; anything else is named.
    use base64::Engine as _;
    std::fs::write(
        d.join("update.pub"),
        base64::engine::general_purpose::STANDARD.encode(pk),
    )
    .unwrap();
    check(&d, &system("0.1.0")).unwrap();
    std::fs::write(d.join("update.pub"), b"not a key").unwrap();
    assert!(matches!(
        check(&d, &system("0.1.0")),
        Err(UpdateError::Key { .. })
    ));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn slot_uuids_are_the_halves_of_the_root_hash() {
    let (r, v) = disk::slot_uuids(ROOTHASH).unwrap();
    assert_eq!(r.to_string(), "01234567-89ab-cdef-0123-456789abcdef");
    assert_eq!(v.to_string(), "00112233-4455-6677-8899-aabbccddeeff");
    assert!(disk::slot_uuids("abc").is_none());
}

#[test]
fn the_running_root_hash_comes_from_the_kernel_command_line() {
    let d = tmp("cmdline");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("c"),
        format!("ro root=/dev/mapper/root roothash={ROOTHASH} quiet\n"),
    )
    .unwrap();
    assert_eq!(roothash_from_cmdline(&d.join("c")).unwrap(), ROOTHASH);
    std::fs::write(d.join("c"), "ro root=/dev/vda2\n").unwrap();
    assert!(matches!(
        roothash_from_cmdline(&d.join("c")),
        Err(UpdateError::Running(_))
    ));
    let _ = std::fs::remove_dir_all(&d);
}
