use super::*;

fn temp_store() -> (tempdir::Dir, Store) {
    let dir = tempdir::Dir::new();
    let store = Store::open(&dir.path().join("state.redb"), 1 << 20).unwrap();
    (dir, store)
}

mod tempdir {
    use std::path::{Path, PathBuf};

    pub(super) struct Dir(PathBuf);

    impl Dir {
        pub(super) fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "vvgate-storage-test-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub(super) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
}

fn segment<'a>(at: u64, bodies: &[&'a [u8]]) -> SpoolSegment<'a> {
    SpoolSegment::V1 {
        spooled_at: at,
        items: bodies
            .iter()
            .map(|b| SpoolItem {
                kind: EnvelopeKind::Ingest,
                msg_id: "m",
                integrity_hash: "h",
                body: b,
            })
            .collect(),
    }
}

fn rec(ts: u64) -> NonceRecord {
    NonceRecord::V1 {
        body_sha256: [1; 32],
        request_id: [2; 16],
        route: Route::Telemetry,
        accepted_at: ts,
    }
}

#[test]
fn nonce_keys_sort_by_timestamp_first() {
    let a = nonce_key(100, "zzzzzzzz");
    let b = nonce_key(101, "aaaaaaaa");
    assert!(a < b);
    assert_ne!(nonce_key(100, "n1"), nonce_key(100, "n2"));
}

#[test]
fn nonce_insert_lookup_and_expiry() {
    let (_d, store) = temp_store();
    store
        .batch(|b| {
            for ts in 100..110 {
                b.nonce_insert(NonceSpace::Telemetry, &nonce_key(ts, "nonce-1"), &rec(ts))?;
            }
            Ok(())
        })
        .unwrap();
    let k = nonce_key(105, "nonce-1");
    assert_eq!(
        store.nonce_get(NonceSpace::Telemetry, &k).unwrap(),
        Some(rec(105))
    );
    // Namespaces are separate.
    assert_eq!(store.nonce_get(NonceSpace::Federation, &k).unwrap(), None);
    let removed = store
        .batch(|b| b.expire_nonces(NonceSpace::Telemetry, 105))
        .unwrap();
    assert_eq!(removed, 5);
    assert_eq!(
        store
            .nonce_get(NonceSpace::Telemetry, &nonce_key(104, "nonce-1"))
            .unwrap(),
        None
    );
    assert!(store
        .nonce_get(NonceSpace::Telemetry, &k)
        .unwrap()
        .is_some());
    assert_eq!(
        store
            .read()
            .unwrap()
            .nonce_count(NonceSpace::Telemetry)
            .unwrap(),
        5
    );
}

#[test]
fn failed_batch_keeps_nothing() {
    let (_d, store) = temp_store();
    let r: Result<(), StorageError> = store.batch(|b| {
        b.nonce_insert(NonceSpace::Telemetry, &nonce_key(1, "n"), &rec(1))?;
        b.spool_push(&segment(1, &[b"x"]))?;
        Err(StorageError::Format { found: 0 })
    });
    assert!(r.is_err());
    assert_eq!(
        store
            .nonce_get(NonceSpace::Telemetry, &nonce_key(1, "n"))
            .unwrap(),
        None
    );
    assert_eq!(
        store.read().unwrap().spool_stats().unwrap(),
        SpoolStats::default()
    );
}

#[test]
fn spool_and_audit_survive_reopen() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("state.redb");
    {
        let store = Store::open(&path, 1 << 20).unwrap();
        store
            .batch(|b| {
                for i in 0..3u8 {
                    let body = [i; 10];
                    b.spool_push(&segment(u64::from(i), &[&body, &body]))?;
                }
                let mut head = b.audit_head();
                head.index += 1;
                head.hash = [9; 32];
                b.audit_append(head, b"{\"index\":1}")?;
                Ok(())
            })
            .unwrap();
        store.batch(|b| b.spool_remove(1).map(|_| ())).unwrap();
    }
    let store = Store::open(&path, 1 << 20).unwrap();
    let r = store.read().unwrap();
    assert_eq!(
        r.spool_stats().unwrap(),
        SpoolStats {
            next_seq: 3,
            count: 4,
            bytes: 40
        }
    );
    let seqs: Vec<u64> = r
        .spool_range(0, 10)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(seqs, vec![0, 2]);
    let tail = r.spool_tail(1).unwrap();
    assert_eq!(tail[0].0, 2);
    assert_eq!(
        decode_spool(&tail[0].1).unwrap().items()[1].body,
        &[2u8; 10]
    );
    assert_eq!(r.audit_head().unwrap().index, 1);
    assert_eq!(r.audit_range(1, 10).unwrap()[0].1, b"{\"index\":1}");
}

#[test]
fn a_database_of_another_format_is_refused() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("state.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_FORMAT, 99u32.to_be_bytes().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    match Store::open(&path, 1 << 20) {
        Err(StorageError::Format { found: 99 }) => {}
        other => panic!("expected a format error, got {:?}", other.err()),
    }
}

#[test]
fn reopen_keeps_committed_data() {
    let (_d, store) = temp_store();
    store
        .batch(|b| b.nonce_insert(NonceSpace::Telemetry, &nonce_key(7, "n"), &rec(7)))
        .unwrap();
    store.reopen().unwrap();
    assert!(store
        .nonce_get(NonceSpace::Telemetry, &nonce_key(7, "n"))
        .unwrap()
        .is_some());
}
