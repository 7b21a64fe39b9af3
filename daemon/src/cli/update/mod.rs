//! `vvctl update`: verify a signed update bundle and install it into the free A/B slot.
//!
//! `apply` does, in this order, and stops at the first failure with the box still booting the
//! running slot:
//! 1. the manifest's Ed25519 signature against the update key baked into the verified root;
//! 2. the manifest (format, product, version newer than the running one, root hash);
//! 3. every file's size and SHA-256, and the UKI's command line pinning the root hash;
//! 4. the disk: two slots, the running one found by its partition UUIDs;
//! 5. the free slot: UKIs on the ESP that boot it are removed, its partitions are renamed
//!    `_updating`, written, synced and read back against the manifest's hashes, then get the
//!    new root hash's partition UUIDs and the name `vvgate_<version>`;
//! 6. only then the new UKI goes onto the ESP as `vvgate_<version>+3.efi` (written to a
//!    temporary name, synced, renamed). systemd-boot starts the newest entry; the `+3` is its
//!    boot counter: a boot that never reaches `boot-complete.target` (the gateway ready)
//!    counts down, and at zero the previous slot's UKI starts again.

pub mod disk;
pub mod manifest;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::CliError;
use manifest::Version;

/// Why an update was refused or failed. Refusals happen before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("refused: {0}")]
    Signature(String),
    #[error("refused: malformed manifest: {0}")]
    Manifest(String),
    #[error("refused: {name}: {detail}")]
    FileChanged { name: &'static str, detail: String },
    #[error("refused: bundle version {bundle} is not newer than the running {running}")]
    NotNewer { bundle: Version, running: Version },
    #[error("refused: the bundle's root hash is the running root's: already installed")]
    SameImage,
    #[error("update key {path}: {detail}")]
    Key { path: String, detail: String },
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Running(String),
    #[error("disk {path}: {detail}")]
    Disk { path: String, detail: String },
    #[error("ESP {path}: {detail}")]
    Esp { path: String, detail: String },
}

impl UpdateError {
    pub fn read(path: &Path) -> impl FnOnce(std::io::Error) -> UpdateError {
        let path = path.display().to_string();
        move |source| UpdateError::Read { path, source }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            UpdateError::Signature(_)
            | UpdateError::Manifest(_)
            | UpdateError::FileChanged { .. }
            | UpdateError::NotNewer { .. }
            | UpdateError::SameImage => crate::exit::DATAERR,
            UpdateError::Key { .. } | UpdateError::Running(_) => crate::exit::CONFIG,
            UpdateError::Read { .. } | UpdateError::Disk { .. } | UpdateError::Esp { .. } => {
                crate::exit::IOERR
            }
        }
    }
}

/// Where the running system keeps what the updater checks against.
#[derive(Args, Debug, Clone)]
pub struct SystemArgs {
    /// The update public key (Ed25519, 32 raw bytes or base64).
    #[arg(long, default_value = "/usr/lib/vvgate/update-ed25519.pub")]
    pub key: PathBuf,
    /// The running image's version (a file holding `major.minor.patch`).
    #[arg(long, default_value = "/usr/lib/vvgate/version")]
    pub version_file: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum UpdateCmd {
    /// Check a bundle (signature, manifest, version, file hashes) without installing it.
    Verify {
        /// The bundle directory.
        bundle: PathBuf,
        #[command(flatten)]
        system: SystemArgs,
    },
    /// Verify a bundle, write it into the free slot, and make it the next boot.
    Apply {
        /// The bundle directory.
        bundle: PathBuf,
        #[command(flatten)]
        system: SystemArgs,
        /// The disk holding the A/B slots.
        #[arg(long, default_value = "/dev/vda")]
        disk: PathBuf,
        /// Where the EFI system partition is mounted.
        #[arg(long, default_value = "/efi")]
        esp: PathBuf,
        /// The running root's verity hash (default: `roothash=` of /proc/cmdline).
        #[arg(long)]
        running_roothash: Option<String>,
    },
}

pub fn run(cmd: UpdateCmd) -> Result<(), CliError> {
    match cmd {
        UpdateCmd::Verify { bundle, system } => {
            let b = check(&bundle, &system)?;
            println!(
                "bundle {} verified: version {}, root hash {}",
                bundle.display(),
                b.manifest.version,
                b.manifest.roothash
            );
            Ok(())
        }
        UpdateCmd::Apply {
            bundle,
            system,
            disk,
            esp,
            running_roothash,
        } => {
            let running = match running_roothash {
                Some(h) => h,
                None => roothash_from_cmdline(Path::new("/proc/cmdline"))?,
            };
            apply(&bundle, &system, &disk, &esp, &running)?;
            Ok(())
        }
    }
}

fn roothash_from_cmdline(path: &Path) -> Result<String, UpdateError> {
    let text = std::fs::read_to_string(path).map_err(UpdateError::read(path))?;
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("roothash="))
        .map(str::to_owned)
        .ok_or_else(|| {
            UpdateError::Running(
                "not running from a verity root (no roothash= in /proc/cmdline); give --running-roothash".into(),
            )
        })
}

/// Steps 1 to 3: signature, manifest, version, files.
pub fn check(bundle: &Path, system: &SystemArgs) -> Result<manifest::Bundle, UpdateError> {
    let key = manifest::read_public_key(&system.key)?;
    let running_text = std::fs::read_to_string(&system.version_file)
        .map_err(UpdateError::read(&system.version_file))?;
    let running = Version::parse(&running_text).ok_or_else(|| {
        UpdateError::Running(format!(
            "{}: {:?} is not major.minor.patch",
            system.version_file.display(),
            running_text.trim()
        ))
    })?;
    let b = manifest::open(bundle, &key)?;
    if b.manifest.version <= running {
        return Err(UpdateError::NotNewer {
            bundle: b.manifest.version,
            running,
        });
    }
    Ok(b)
}

/// What `apply` did.
#[derive(Debug)]
pub struct Applied {
    pub slot: char,
    pub uki: PathBuf,
}

/// The whole update (see the module documentation for the order).
pub fn apply(
    bundle: &Path,
    system: &SystemArgs,
    disk_path: &Path,
    esp: &Path,
    running_roothash: &str,
) -> Result<Applied, UpdateError> {
    let b = check(bundle, system)?;
    let m = &b.manifest;
    if m.roothash == running_roothash {
        return Err(UpdateError::SameImage);
    }
    let new_uuids = disk::slot_uuids(&m.roothash)
        .ok_or_else(|| UpdateError::Manifest("roothash gives no partition UUIDs".into()))?;
    let disk = disk::Disk::open(disk_path)?;
    let running = disk.running(running_roothash)?;
    let free = disk.slots[1 - running].clone();
    let linux = esp.join("EFI").join("Linux");
    let esp_err = |detail: String| UpdateError::Esp {
        path: esp.display().to_string(),
        detail,
    };
    if !linux.is_dir() {
        return Err(esp_err(
            "no EFI/Linux directory (is the ESP mounted?)".into(),
        ));
    }
    say(&format!(
        "bundle {} verified (version {}); running slot {}, installing into slot {}",
        bundle.display(),
        m.version,
        disk.slots[running].label,
        free.label
    ));
    // UKIs that boot the free slot would boot a half-written root: they go first.
    let running_needle = format!("roothash={running_roothash} ");
    for entry in std::fs::read_dir(&linux).map_err(|e| esp_err(e.to_string()))? {
        let path = entry.map_err(|e| esp_err(e.to_string()))?.path();
        if path.extension().is_some_and(|e| e == "efi" || e == "tmp") {
            let bytes = std::fs::read(&path).map_err(UpdateError::read(&path))?;
            if !bytes
                .windows(running_needle.len())
                .any(|w| w == running_needle.as_bytes())
            {
                say(&format!(
                    "removing {} (it boots slot {})",
                    path.display(),
                    free.label
                ));
                std::fs::remove_file(&path)
                    .map_err(|e| esp_err(format!("{}: {e}", path.display())))?;
            }
        }
    }
    disk.relabel(&free, None, "_updating")?;
    let hash = |name: &str| m.file(name).map(|f| f.sha256).unwrap_or_default();
    disk.write_part(&free.root, &b.path("root.img"), &hash("root.img"))?;
    disk.write_part(&free.verity, &b.path("root.verity"), &hash("root.verity"))?;
    disk.relabel(&free, Some(new_uuids), &format!("vvgate_{}", m.version))?;
    say(&format!("slot {} written and read back", free.label));
    // The switch: the new UKI appears under its final name only when complete and synced.
    let name = format!("vvgate_{}+3.efi", m.version);
    let tmp = linux.join(format!("{name}.tmp"));
    let fin = linux.join(&name);
    std::fs::copy(b.path("uki.efi"), &tmp)
        .map_err(|e| esp_err(format!("{}: {e}", tmp.display())))?;
    let sync = |p: &Path| -> Result<(), UpdateError> {
        std::fs::File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(|e| esp_err(format!("sync {}: {e}", p.display())))
    };
    sync(&tmp)?;
    std::fs::rename(&tmp, &fin).map_err(|e| esp_err(format!("{}: {e}", fin.display())))?;
    sync(&linux)?;
    say(&format!(
        "next boot: {} (version {}, three tries, then back to the running slot)",
        fin.display(),
        m.version
    ));
    Ok(Applied {
        slot: free.label,
        uki: fin,
    })
}

fn say(line: &str) {
    let _ = writeln!(std::io::stdout(), "vvctl update: {line}");
}

#[cfg(test)]
mod tests;
