#![allow(clippy::cast_possible_truncation)] // small test sizes index vectors

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

/// Telemetry nonces stored in the nonce table (committed, merged from the stage).
fn telemetry_nonces(store: &Store) -> u64 {
    store
        .read()
        .unwrap()
        .nonce_count(NonceSpace::Telemetry)
        .unwrap()
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
    // The horizon follows the highest expiry, per space, and never goes down.
    assert_eq!(store.nonce_horizon(NonceSpace::Telemetry).unwrap(), 105);
    assert_eq!(store.nonce_horizon(NonceSpace::Federation).unwrap(), 0);
    store
        .batch(|b| b.expire_nonces(NonceSpace::Telemetry, 50))
        .unwrap();
    assert_eq!(store.nonce_horizon(NonceSpace::Telemetry).unwrap(), 105);
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
    assert_eq!(telemetry_nonces(&store), 5);
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
fn staged_nonces_are_found_merged_reloaded_and_counted() {
    let (dir, store) = temp_store();
    let staged = |space| {
        let r = store.read().unwrap();
        let t = r.txn.open_table(NONCE_STAGE).unwrap();
        let n = t
            .iter()
            .unwrap()
            .filter(|row| {
                let (_, v) = row.as_ref().unwrap();
                decode_stage_row(v.value()).unwrap().0 == space
            })
            .count();
        n
    };
    let table = |space: NonceSpace| {
        let r = store.read().unwrap();
        r.txn.open_table(space.table()).unwrap().len().unwrap()
    };
    let a = nonce_key(200, "a");
    let b = nonce_key(200, "b");
    store
        .batch(|bt| {
            bt.nonce_insert(NonceSpace::Telemetry, &a, &rec(200))?;
            // Found inside the transaction that staged it.
            assert_eq!(bt.nonce_get(NonceSpace::Telemetry, &a)?, Some(rec(200)));
            assert_eq!(bt.nonce_get(NonceSpace::Federation, &a)?, None);
            bt.nonce_insert(NonceSpace::Federation, &b, &rec(200))
        })
        .unwrap();
    // Staged, not in the tables: one sequential row each.
    assert_eq!(
        (staged(NonceSpace::Telemetry), table(NonceSpace::Telemetry)),
        (1, 0)
    );
    assert_eq!(
        (
            staged(NonceSpace::Federation),
            table(NonceSpace::Federation)
        ),
        (1, 0)
    );
    assert_eq!(
        store.nonce_get(NonceSpace::Telemetry, &a).unwrap(),
        Some(rec(200))
    );
    assert_eq!(store.nonce_get(NonceSpace::Federation, &a).unwrap(), None);
    assert_eq!(
        store.nonce_get(NonceSpace::Federation, &b).unwrap(),
        Some(rec(200))
    );
    // A later transaction sees the committed stage.
    store
        .batch(|bt| {
            assert_eq!(bt.nonce_get(NonceSpace::Telemetry, &a)?, Some(rec(200)));
            Ok(())
        })
        .unwrap();
    // A failed transaction stages nothing.
    let c = nonce_key(201, "c");
    assert!(store
        .batch(|bt| {
            bt.nonce_insert(NonceSpace::Telemetry, &c, &rec(201))?;
            Err::<(), _>(StorageError::Closed)
        })
        .is_err());
    assert_eq!(store.nonce_get(NonceSpace::Telemetry, &c).unwrap(), None);
    // The stage survives a reopen and a restart.
    store.reopen().unwrap();
    assert_eq!(
        store.nonce_get(NonceSpace::Telemetry, &a).unwrap(),
        Some(rec(200))
    );
    drop(store);
    let store = Store::open(&dir.path().join("state.redb"), 1 << 20).unwrap();
    assert_eq!(
        store.nonce_get(NonceSpace::Federation, &b).unwrap(),
        Some(rec(200))
    );
    // Merged: moved into the tables, the stage emptied, still found and counted once.
    assert_eq!(store.merge_staged_nonces().unwrap(), 2);
    {
        let r = store.read().unwrap();
        assert_eq!(r.txn.open_table(NONCE_STAGE).unwrap().len().unwrap(), 0);
        assert_eq!(r.txn.open_table(NONCES).unwrap().len().unwrap(), 1);
        assert_eq!(r.nonce_count(NonceSpace::Telemetry).unwrap(), 1);
        assert_eq!(r.nonce_count(NonceSpace::Federation).unwrap(), 1);
    }
    assert_eq!(
        store.nonce_get(NonceSpace::Telemetry, &a).unwrap(),
        Some(rec(200))
    );
    // Staged again after the merge, then expired with the rest.
    let d = nonce_key(150, "d");
    store
        .batch(|bt| bt.nonce_insert(NonceSpace::Telemetry, &d, &rec(150)))
        .unwrap();
    assert_eq!(telemetry_nonces(&store), 2);
    let removed = store
        .batch(|bt| bt.expire_nonces(NonceSpace::Telemetry, 180))
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(store.nonce_get(NonceSpace::Telemetry, &d).unwrap(), None);
    assert_eq!(
        store.nonce_get(NonceSpace::Telemetry, &a).unwrap(),
        Some(rec(200))
    );
}

#[test]
fn staged_nonces_merge_by_themselves() {
    let (_d, store) = temp_store();
    let n = u64::try_from(STAGE_MERGE_ENTRIES).unwrap();
    store
        .batch(|bt| {
            for i in 0..n {
                bt.nonce_insert(
                    NonceSpace::Telemetry,
                    &nonce_key(300, &i.to_string()),
                    &rec(300),
                )?;
            }
            Ok(())
        })
        .unwrap();
    // The next durable commit finds the stage full and merges it.
    store.batch(|_| Ok(())).unwrap();
    let r = store.read().unwrap();
    assert_eq!(r.txn.open_table(NONCE_STAGE).unwrap().len().unwrap(), 0);
    assert_eq!(r.txn.open_table(NONCES).unwrap().len().unwrap(), n);
    drop(r);
    assert!(store
        .nonce_get(NonceSpace::Telemetry, &nonce_key(300, "17"))
        .unwrap()
        .is_some());
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

fn append_entries(store: &Store, lines: std::ops::Range<u64>) {
    store
        .batch(|b| {
            for i in lines {
                let mut head = b.audit_head();
                head.index += 1;
                assert_eq!(head.index, i);
                b.audit_append(head, format!("{{\"index\":{i}}}").as_bytes())?;
            }
            Ok(())
        })
        .unwrap();
}

fn memory_tree(n: u64) -> (Vec<tree::Hash>, Vec<tree::Hash>) {
    let mut f = tree::Frontier::default();
    let (mut stored, mut roots) = (Vec::new(), vec![tree::EMPTY_ROOT]);
    for i in 1..=n {
        f.append(
            tree::leaf_hash(format!("{{\"index\":{i}}}").as_bytes()),
            &mut stored,
        );
        roots.push(f.root());
    }
    (stored, roots)
}

#[test]
fn the_tree_follows_the_log_across_batches_blocks_and_failures() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("state.redb");
    let store = Store::open(&path, 1 << 20).unwrap();
    let mut next = 1u64;
    for (k, size) in [1u64, 2, 1, 300, 7, 256, 33, 400].into_iter().enumerate() {
        append_entries(&store, next..next + size);
        next += size;
        if k == 3 {
            // A failed transaction leaves the tree as it was.
            let r: Result<(), StorageError> = store.batch(|b| {
                let mut head = b.audit_head();
                head.index += 1;
                b.audit_append(head, b"lost")?;
                Err(StorageError::Closed)
            });
            assert!(r.is_err());
        }
    }
    let n = next - 1;
    let (stored, roots) = memory_tree(n);
    let check = |store: &Store| {
        let r = store.read().unwrap();
        for size in [0, 1, 2, 3, 4, 5, 255, 256, 257, 511, 512, 999, n] {
            assert_eq!(
                r.tree_hash(size).unwrap(),
                roots[size as usize],
                "size {size}"
            );
        }
        let (size, root) = store.batch(|b| Ok(b.audit_tree())).unwrap();
        assert_eq!((size, root), (n, roots[n as usize]));
        for (size, index) in [(n, 1), (n, n), (500, 257), (3, 2)] {
            let p = r.prove_entry(size, index).unwrap();
            assert_eq!(
                p,
                tree::prove_record(size, index - 1, stored.as_slice()).unwrap()
            );
            let leaf = tree::leaf_hash(format!("{{\"index\":{index}}}").as_bytes());
            tree::check_record(&p, size, &roots[size as usize], index - 1, &leaf).unwrap();
        }
        let p = r.prove_consistency(n, 300).unwrap();
        tree::check_tree(&p, n, &roots[n as usize], 300, &roots[300]).unwrap();
        assert!(matches!(
            r.prove_entry(n, n + 1),
            Err(StorageError::Tree(tree::TreeError::BadRequest(_)))
        ));
        assert!(matches!(
            r.prove_entry(n + 1, 1),
            Err(StorageError::Tree(tree::TreeError::BadRequest(_)))
        ));
        assert!(r.prove_consistency(10, 0).is_err());
    };
    check(&store);
    drop(store);
    // Reopened: the frontier is read back from the blocks.
    let store = Store::open(&path, 1 << 20).unwrap();
    check(&store);
    append_entries(&store, next..next + 5);
    let (_, roots) = memory_tree(n + 5);
    assert_eq!(
        store.read().unwrap().tree_hash(n + 5).unwrap(),
        roots[(n + 5) as usize]
    );
}

#[test]
fn a_format_2_database_gets_its_tree_built() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("state.redb");
    {
        let store = Store::open(&path, 1 << 20).unwrap();
        append_entries(&store, 1..600);
    }
    {
        // What format 2 looked like: entries, no tree.
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(AUDIT_HASHES).unwrap();
        txn.delete_table(AUDIT_HASHES_TAIL).unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_FORMAT, 2u32.to_be_bytes().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = Store::open(&path, 1 << 20).unwrap();
    let (_, roots) = memory_tree(599);
    assert_eq!(store.read().unwrap().tree_hash(599).unwrap(), roots[599]);
    assert_eq!(store.read().unwrap().tree_hash(77).unwrap(), roots[77]);
    drop(store);
    assert_hash_layout(&path, 599);
}

/// Every row of `audit_hashes` is a complete block, and `audit_hashes_tail` holds exactly the
/// hashes of the block being filled, in contiguous rows.
fn assert_hash_layout(path: &std::path::Path, entries: u64) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let stored = tree::stored_hash_count(entries);
    let full = stored / audit::BLOCK;
    let blocks = txn.open_table(AUDIT_HASHES).unwrap();
    let mut n = 0;
    for row in blocks.iter().unwrap() {
        let (k, v) = row.unwrap();
        assert_eq!(k.value(), n, "blocks are contiguous");
        assert_eq!(v.value().len(), 8192, "block {n} is complete");
        n += 1;
    }
    assert_eq!(n, full);
    let tail = txn.open_table(AUDIT_HASHES_TAIL).unwrap();
    let mut next = full * audit::BLOCK;
    for row in tail.iter().unwrap() {
        let (k, v) = row.unwrap();
        assert_eq!(k.value(), next, "tail rows are contiguous");
        next += v.value().len() as u64 / 32;
    }
    assert_eq!(next, stored);
}

#[test]
fn small_commits_append_tail_rows_and_complete_blocks_whole() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("state.redb");
    let mut next = 1u64;
    {
        let store = Store::open(&path, 1 << 20).unwrap();
        // One entry per commit across two block boundaries, then a commit spanning blocks.
        for _ in 0..300 {
            append_entries(&store, next..next + 1);
            next += 1;
        }
        append_entries(&store, next..next + 700);
        next += 700;
        for _ in 0..5 {
            append_entries(&store, next..next + 3);
            next += 3;
        }
    }
    let n = next - 1;
    assert_hash_layout(&path, n);
    let store = Store::open(&path, 1 << 20).unwrap();
    let (stored, roots) = memory_tree(n);
    let r = store.read().unwrap();
    for size in [1, 127, 128, 129, 300, 301, 999, 1000, n] {
        assert_eq!(
            r.tree_hash(size).unwrap(),
            roots[size as usize],
            "size {size}"
        );
    }
    for index in [1, 200, 1000, n] {
        assert_eq!(
            r.prove_entry(n, index).unwrap(),
            tree::prove_record(n, index - 1, stored.as_slice()).unwrap()
        );
    }
}

#[test]
fn a_format_3_database_moves_its_partial_block_to_the_tail() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("state.redb");
    {
        let store = Store::open(&path, 1 << 20).unwrap();
        append_entries(&store, 1..400);
        append_entries(&store, 400..601);
    }
    {
        // What format 3 looked like: the block being filled as a short row of the block table.
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut partial = Vec::new();
            let tail = txn.open_table(AUDIT_HASHES_TAIL).unwrap();
            for row in tail.iter().unwrap() {
                partial.extend_from_slice(row.unwrap().1.value());
            }
            assert!(!partial.is_empty());
            let full = tree::stored_hash_count(600) / audit::BLOCK;
            txn.open_table(AUDIT_HASHES)
                .unwrap()
                .insert(full, partial.as_slice())
                .unwrap();
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_FORMAT, 3u32.to_be_bytes().as_slice())
                .unwrap();
        }
        txn.delete_table(AUDIT_HASHES_TAIL).unwrap();
        txn.commit().unwrap();
    }
    {
        let store = Store::open(&path, 1 << 20).unwrap();
        let (stored, roots) = memory_tree(600);
        let r = store.read().unwrap();
        assert_eq!(r.tree_hash(600).unwrap(), roots[600]);
        assert_eq!(r.tree_hash(513).unwrap(), roots[513]);
        assert_eq!(
            r.prove_entry(600, 599).unwrap(),
            tree::prove_record(600, 598, stored.as_slice()).unwrap()
        );
        drop(r);
        // Appends go on from the moved tail and complete its block.
        append_entries(&store, 601..700);
    }
    assert_hash_layout(&path, 699);
    let store = Store::open(&path, 1 << 20).unwrap();
    let (_, roots) = memory_tree(699);
    assert_eq!(store.read().unwrap().tree_hash(699).unwrap(), roots[699]);
    let db_format = {
        drop(store);
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        decode_u32(meta.get(META_FORMAT).unwrap().unwrap().value()).unwrap()
    };
    assert_eq!(db_format, FORMAT_VERSION);
}

#[test]
fn checkpoints_are_kept_by_size() {
    let (_d, store) = temp_store();
    append_entries(&store, 1..4);
    store
        .batch(|b| {
            b.checkpoint_put(3, b"note 3")?;
            b.checkpoint_put(1, b"note 1")?;
            assert_eq!(b.checkpoint_latest()?, Some((3, b"note 3".to_vec())));
            Ok(())
        })
        .unwrap();
    store
        .batch(|b| b.checkpoint_put(3, b"note 3 cosigned"))
        .unwrap();
    let r = store.read().unwrap();
    assert_eq!(
        r.checkpoint_latest().unwrap(),
        Some((3, b"note 3 cosigned".to_vec()))
    );
    assert_eq!(r.checkpoints(2, 10).unwrap().len(), 1);
    assert_eq!(r.checkpoint_at(1).unwrap(), Some(b"note 1".to_vec()));
    assert_eq!(r.checkpoint_at(2).unwrap(), None);
}

#[test]
fn pruning_keeps_what_later_roots_and_proofs_need() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("state.redb");
    let store = Store::open(&path, 1 << 20).unwrap();
    // Real entry lines carry an entry_hash; the pruned boundary's is remembered.
    let line = |i: u64| format!("{{\"entry_hash\":\"{:064x}\",\"index\":{i}}}", i);
    let append = |store: &Store, r: std::ops::Range<u64>| {
        store
            .batch(|b| {
                for i in r {
                    let mut head = b.audit_head();
                    head.index += 1;
                    b.audit_append(head, line(i).as_bytes())?;
                }
                Ok(())
            })
            .unwrap()
    };
    append(&store, 1..1001);
    let mut f = tree::Frontier::default();
    let (mut stored, mut roots) = (Vec::new(), vec![tree::EMPTY_ROOT]);
    for i in 1..=1100 {
        f.append(tree::leaf_hash(line(i).as_bytes()), &mut stored);
        roots.push(f.root());
    }
    // Not a multiple of the segment size, or beyond the log: refused.
    assert!(store.batch(|b| b.audit_prune(100, 6)).is_err());
    assert!(store.batch(|b| b.audit_prune(1024, 6)).is_err());
    store.batch(|b| b.audit_prune(256, 6)).unwrap();
    store.batch(|b| b.audit_prune(512, 6)).unwrap();
    let r = store.read().unwrap();
    let ret = r.audit_retention().unwrap();
    assert_eq!(ret.pruned_through, 512);
    assert_eq!(ret.pruned_hash[31], (512 % 256) as u8);
    assert_eq!(r.audit_range(1, 10).unwrap()[0].0, 513);
    for size in [512, 513, 640, 777, 1000] {
        assert_eq!(r.tree_hash(size).unwrap(), roots[size as usize], "{size}");
    }
    for index in [513, 600, 1000] {
        let p = r.prove_entry(1000, index).unwrap();
        assert_eq!(
            p,
            tree::prove_record(1000, index - 1, stored.as_slice()).unwrap()
        );
    }
    let p = r.prove_consistency(1000, 576).unwrap();
    tree::check_tree(&p, 1000, &roots[1000], 576, &roots[576]).unwrap();
    // Below the pruning point the small subtrees are gone.
    assert!(matches!(
        r.tree_hash(100),
        Err(StorageError::Tree(tree::TreeError::Missing(_)))
    ));
    drop(r);
    drop(store);
    // After a reopen the frontier comes back and appends go on.
    let store = Store::open(&path, 1 << 20).unwrap();
    append(&store, 1001..1101);
    assert_eq!(store.read().unwrap().tree_hash(1100).unwrap(), roots[1100]);
}

#[test]
fn graph_records_stay_in_their_tenant_and_are_bounded() {
    use crate::GraphRecord;
    let (_dir, store) = temp_store();
    let rec = |n: u32| GraphRecord::V1 {
        request_id: [0; 16],
        operator_id: "op".into(),
        execution_fingerprint: format!("{n:064}"),
        attestation_measurement_hash: "a".repeat(64),
        schema_version: "execution.graph.v1".into(),
        target_urn: None,
        nodes: Some(n),
        edges: None,
        body_sha256: [0; 32],
        accepted_at: 1,
    };
    let (a, b) = (
        "10000000-0000-0000-0000-000000000001",
        "20000000-0000-0000-0000-000000000002",
    );
    store
        .batch(|t| {
            for n in 0..5 {
                t.graph_insert(a, &rec(n), 3)?;
            }
            t.graph_insert(b, &rec(100), 3)
        })
        .unwrap();
    let r = store.read().unwrap();
    let nodes = |recs: Vec<GraphRecord>| -> Vec<u32> {
        recs.into_iter()
            .map(|GraphRecord::V1 { nodes, .. }| nodes.unwrap())
            .collect()
    };
    // The newest three of A, oldest first; B sees only its own; a prefix of A sees nothing.
    assert_eq!(nodes(r.graphs(a, 10).unwrap()), [2, 3, 4]);
    assert_eq!(nodes(r.graphs(a, 2).unwrap()), [3, 4]);
    assert_eq!(nodes(r.graphs(b, 10).unwrap()), [100]);
    assert!(r.graphs("10000000", 10).unwrap().is_empty());
    assert!(r.graphs("", 10).unwrap().is_empty());
}

#[test]
fn kill_switch_survives_reopen_and_failed_batches() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("state.redb");
    let store = Store::open(&path, 1 << 20).unwrap();
    assert_eq!(
        store.read().unwrap().kill_switch().unwrap(),
        KillSwitch::Armed
    );
    let engaged = KillSwitch::V1 {
        engaged: true,
        changed_at: 7,
        audit_index: 3,
        by: "console uid=0".into(),
        reason: "drill".into(),
    };
    store.batch(|b| b.kill_switch_set(&engaged)).unwrap();
    // A failed transaction that tried to re-arm keeps the switch engaged.
    let r: Result<(), StorageError> = store.batch(|b| {
        b.kill_switch_set(&KillSwitch::Armed)?;
        Err(StorageError::Format { found: 0 })
    });
    assert!(r.is_err());
    drop(store);
    let store = Store::open(&path, 1 << 20).unwrap();
    let found = store.read().unwrap().kill_switch().unwrap();
    assert_eq!(found, engaged);
    assert!(found.engaged());
}

#[test]
fn nonce_lookups_see_every_returned_commit_and_let_reopen_proceed() {
    let (_d, store) = temp_store();
    let k = nonce_key(9, "n");
    // The first lookups share one snapshot; a commit after them must not stay hidden.
    assert_eq!(store.nonce_get(NonceSpace::Telemetry, &k).unwrap(), None);
    assert_eq!(store.nonce_get(NonceSpace::Federation, &k).unwrap(), None);
    store
        .batch(|b| b.nonce_insert(NonceSpace::Telemetry, &k, &rec(9)))
        .unwrap();
    assert_eq!(
        store.nonce_get(NonceSpace::Telemetry, &k).unwrap(),
        Some(rec(9))
    );
    // A commit that leaves the nonce tables alone still refreshes the snapshot.
    store
        .batch(|b| b.nonce_insert(NonceSpace::Federation, &k, &rec(9)))
        .unwrap();
    assert_eq!(
        store.nonce_get(NonceSpace::Federation, &k).unwrap(),
        Some(rec(9))
    );
    // The held snapshot keeps the file open; a reopen lets go of it first.
    store.reopen().unwrap();
    assert_eq!(
        store.nonce_get(NonceSpace::Telemetry, &k).unwrap(),
        Some(rec(9))
    );
}
