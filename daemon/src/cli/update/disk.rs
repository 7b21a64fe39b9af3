//! The appliance disk: a GPT with two root slots (A/B), each a root partition (squashfs) and a
//! verity partition (its hash tree). A slot's partition UUIDs are the halves of its root hash,
//! which is how the kernel command line in its UKI finds it
//! (`systemd.verity_root_data=PARTUUID=<hash[0..32]>`, `..._hash=PARTUUID=<hash[32..64]>`).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::manifest::sha256_of;
use super::UpdateError;

/// GPT type of a root partition for x86-64 (Discoverable Partitions Specification).
pub const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// GPT type of a root verity partition for x86-64.
pub const ROOT_VERITY_X86_64: &str = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5";

/// One A/B slot: GPT entry numbers and byte ranges of its two partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub label: char,
    pub root: Part,
    pub verity: Part,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub number: u32,
    pub uuid: uuid::Uuid,
    pub name: String,
    pub start: u64,
    pub len: u64,
}

/// The partition UUIDs that a root hash gives its slot: (root, verity).
pub fn slot_uuids(roothash: &str) -> Option<(uuid::Uuid, uuid::Uuid)> {
    let a = uuid::Uuid::try_parse(roothash.get(0..32)?).ok()?;
    let b = uuid::Uuid::try_parse(roothash.get(32..64)?).ok()?;
    Some((a, b))
}

/// The disk and its two slots.
pub struct Disk {
    pub path: PathBuf,
    pub slots: [Slot; 2],
}

fn disk_err(path: &Path, detail: impl Into<String>) -> UpdateError {
    UpdateError::Disk {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

impl Disk {
    pub fn open(path: &Path) -> Result<Self, UpdateError> {
        let gpt = gpt::GptConfig::new()
            .writable(false)
            .open(path)
            .map_err(|e| disk_err(path, format!("no readable GPT: {e}")))?;
        let bs = u64::from(*gpt.logical_block_size());
        let of_type = |t: &str| -> Vec<Part> {
            let mut v: Vec<Part> = gpt
                .partitions()
                .iter()
                .filter(|(_, p)| {
                    p.is_used() && p.part_type_guid.guid.to_string().eq_ignore_ascii_case(t)
                })
                .map(|(n, p)| Part {
                    number: *n,
                    uuid: p.part_guid,
                    name: p.name.clone(),
                    start: p.first_lba * bs,
                    len: (p.last_lba + 1 - p.first_lba) * bs,
                })
                .collect();
            v.sort_by_key(|p| p.start);
            v
        };
        let roots = of_type(ROOT_X86_64);
        let verities = of_type(ROOT_VERITY_X86_64);
        let (Ok([ra, rb]), Ok([va, vb])) = (
            <[Part; 2]>::try_from(roots.clone()),
            <[Part; 2]>::try_from(verities.clone()),
        ) else {
            return Err(disk_err(
                path,
                format!(
                    "expected 2 root and 2 root-verity partitions (A/B), found {} and {}",
                    roots.len(),
                    verities.len()
                ),
            ));
        };
        Ok(Self {
            path: path.to_path_buf(),
            slots: [
                Slot {
                    label: 'A',
                    root: ra,
                    verity: va,
                },
                Slot {
                    label: 'B',
                    root: rb,
                    verity: vb,
                },
            ],
        })
    }

    /// The slot the running system booted from (its partition UUIDs come from `roothash`).
    pub fn running(&self, roothash: &str) -> Result<usize, UpdateError> {
        let (r, v) = slot_uuids(roothash).ok_or_else(|| {
            disk_err(
                &self.path,
                format!("running root hash {roothash:?} is not 64 hex"),
            )
        })?;
        self.slots
            .iter()
            .position(|s| s.root.uuid == r && s.verity.uuid == v)
            .ok_or_else(|| {
                disk_err(
                    &self.path,
                    format!("the running root (hash {roothash}) is on no slot of this disk; refusing to guess which slot is free"),
                )
            })
    }

    /// Set a slot's partition UUIDs and names in the GPT (primary and backup headers).
    pub fn relabel(
        &self,
        slot: &Slot,
        uuids: Option<(uuid::Uuid, uuid::Uuid)>,
        name: &str,
    ) -> Result<(), UpdateError> {
        let mut gpt = gpt::GptConfig::new()
            .writable(true)
            .open(&self.path)
            .map_err(|e| disk_err(&self.path, format!("cannot open the GPT for writing: {e}")))?;
        let mut parts = gpt.partitions().clone();
        for (n, suffix, uuid) in [
            (slot.root.number, "", uuids.map(|u| u.0)),
            (slot.verity.number, "_verity", uuids.map(|u| u.1)),
        ] {
            let p = parts
                .get_mut(&n)
                .ok_or_else(|| disk_err(&self.path, format!("partition {n} vanished")))?;
            p.name = format!("{name}{suffix}");
            if let Some(u) = uuid {
                p.part_guid = u;
            }
        }
        gpt.update_partitions(parts)
            .map_err(|e| disk_err(&self.path, format!("GPT update: {e}")))?;
        let file = gpt
            .write()
            .map_err(|e| disk_err(&self.path, format!("GPT write: {e}")))?;
        file.sync_all()
            .map_err(|e| disk_err(&self.path, format!("sync: {e}")))
    }

    /// Copy `src` into the partition, sync, then read it back and compare with `sha256`.
    pub fn write_part(
        &self,
        part: &Part,
        src: &Path,
        sha256: &[u8; 32],
    ) -> Result<(), UpdateError> {
        let mut input = File::open(src).map_err(UpdateError::read(src))?;
        let size = input.metadata().map_err(UpdateError::read(src))?.len();
        if size > part.len {
            return Err(disk_err(
                &self.path,
                format!(
                    "{} ({size} bytes) does not fit partition {} ({} bytes)",
                    src.display(),
                    part.number,
                    part.len
                ),
            ));
        }
        let werr = |e: std::io::Error| {
            disk_err(
                &self.path,
                format!("writing partition {}: {e}", part.number),
            )
        };
        let mut dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(werr)?;
        dev.seek(SeekFrom::Start(part.start)).map_err(werr)?;
        let copied = std::io::copy(&mut input, &mut dev).map_err(werr)?;
        dev.flush().map_err(werr)?;
        dev.sync_all().map_err(werr)?;
        dev.seek(SeekFrom::Start(part.start)).map_err(werr)?;
        let (digest, n) = sha256_of(&mut dev, size).map_err(werr)?;
        if copied != size || n != size || &digest != sha256 {
            return Err(disk_err(
                &self.path,
                format!(
                    "partition {} does not read back what was written ({} of {size} bytes, hash {})",
                    part.number,
                    n,
                    if &digest == sha256 { "equal" } else { "different" }
                ),
            ));
        }
        Ok(())
    }
}
