//! The behaviour every [`KvEngine`] must show, run against each engine by its own tests.
//!
//! Each check uses its own first key byte, so they can share one engine.

use crate::engine::KvEngine;
use crate::engine::WriteBatch;
use crate::error::StorageError;

fn k(prefix: u8, s: &str) -> Vec<u8> {
    let mut v = vec![prefix];
    v.extend_from_slice(s.as_bytes());
    v
}

fn put(e: &dyn KvEngine, key: Vec<u8>, value: &str) {
    let mut b = WriteBatch::new();
    b.put(key, value.as_bytes().to_vec());
    e.write(&b, false).unwrap();
}

fn keys_in(e: &dyn KvEngine, prefix: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    e.scan(&[prefix], &[prefix + 1], usize::MAX).unwrap()
}

fn strings(kvs: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|(k, v)| {
            (String::from_utf8_lossy(&k[1..]).into_owned(), String::from_utf8_lossy(v).into_owned())
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// Runs every check against `e`.
pub(crate) fn run_all(e: &dyn KvEngine) {
    put_get_overwrite_delete(e);
    batch_applies_in_order(e);
    delete_range_removes_exactly_the_range(e);
    scan_is_ordered_bounded_and_limited(e);
    scan_consistent_ignores_writes_made_while_visiting(e);
    scan_consistent_stops_at_the_first_error(e);
    last_in_range_finds_the_greatest_key(e);
    synced_writes_and_wal_flushes_succeed(e);
}

fn put_get_overwrite_delete(e: &dyn KvEngine) {
    let p = 0x10;
    assert_eq!(e.get(&k(p, "a")).unwrap(), None);
    put(e, k(p, "a"), "1");
    put(e, k(p, "b"), "2");
    assert_eq!(e.get(&k(p, "a")).unwrap(), Some(b"1".to_vec()));
    put(e, k(p, "a"), "3");
    assert_eq!(e.get(&k(p, "a")).unwrap(), Some(b"3".to_vec()));
    let mut b = WriteBatch::new();
    b.delete(k(p, "a"));
    e.write(&b, false).unwrap();
    assert_eq!(e.get(&k(p, "a")).unwrap(), None);
    assert_eq!(e.get(&k(p, "b")).unwrap(), Some(b"2".to_vec()));
    // Empty keys and values are legal.
    put(e, k(p, ""), "");
    assert_eq!(e.get(&k(p, "")).unwrap(), Some(Vec::new()));
}

fn batch_applies_in_order(e: &dyn KvEngine) {
    let p = 0x20;
    put(e, k(p, "gone"), "x");
    let mut b = WriteBatch::new();
    b.put(k(p, "a"), b"1".to_vec())
        .put(k(p, "a"), b"2".to_vec())
        .put(k(p, "b"), b"1".to_vec())
        .delete(k(p, "b"))
        .delete_range(k(p, "c"), k(p, "h"))
        .put(k(p, "d"), b"after-range".to_vec());
    e.write(&b, false).unwrap();
    assert_eq!(strings(&keys_in(e, p)), pairs(&[("a", "2"), ("d", "after-range")]));
    // An empty batch is fine.
    e.write(&WriteBatch::new(), false).unwrap();
}

fn delete_range_removes_exactly_the_range(e: &dyn KvEngine) {
    let p = 0x30;
    for i in 0..10 {
        put(e, k(p, &format!("k{i}")), "v");
    }
    let mut b = WriteBatch::new();
    b.delete_range(k(p, "k3"), k(p, "k7"));
    e.write(&b, false).unwrap();
    let left: Vec<String> = strings(&keys_in(e, p)).into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, vec!["k0", "k1", "k2", "k7", "k8", "k9"]);

    // Empty and inverted ranges delete nothing and are not errors.
    let mut b = WriteBatch::new();
    b.delete_range(k(p, "k8"), k(p, "k8")).delete_range(k(p, "k9"), k(p, "k0"));
    e.write(&b, false).unwrap();
    assert_eq!(keys_in(e, p).len(), 6);
}

fn scan_is_ordered_bounded_and_limited(e: &dyn KvEngine) {
    let p = 0x40;
    for key in ["b", "a\u{0}", "ab", "a", "c", "\u{7f}", "bb"] {
        put(e, k(p, key), key);
    }
    let all: Vec<String> = strings(&keys_in(e, p)).into_iter().map(|(k, _)| k).collect();
    assert_eq!(all, vec!["a", "a\u{0}", "ab", "b", "bb", "c", "\u{7f}"]);

    let limited = e.scan(&k(p, "a"), &k(p, "z"), 2).unwrap();
    assert_eq!(strings(&limited), pairs(&[("a", "a"), ("a\u{0}", "a\u{0}")]));

    // End is exclusive, start inclusive.
    let mid = e.scan(&k(p, "ab"), &k(p, "bb"), usize::MAX).unwrap();
    assert_eq!(strings(&mid), pairs(&[("ab", "ab"), ("b", "b")]));

    assert!(e.scan(&k(p, "c"), &k(p, "a"), 10).unwrap().is_empty());
    assert!(e.scan(&k(p, "a"), &k(p, "z"), 0).unwrap().is_empty());
}

fn scan_consistent_ignores_writes_made_while_visiting(e: &dyn KvEngine) {
    let p = 0x50;
    for i in 0..10 {
        put(e, k(p, &format!("c{i}")), "old");
    }
    let before = keys_in(e, p);
    let mut seen = Vec::new();
    e.scan_consistent(&[p], &[p + 1], &mut |key, value| {
        if seen.is_empty() {
            let mut b = WriteBatch::new();
            b.put(k(p, "c5"), b"new".to_vec())
                .delete(k(p, "c6"))
                .put(k(p, "c55"), b"inserted".to_vec())
                .delete_range(k(p, "c8"), k(p, "c9"));
            e.write(&b, false)?;
        }
        seen.push((key.to_vec(), value.to_vec()));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, before, "the visit must show the view taken before the writes");

    let after: Vec<String> = strings(&keys_in(e, p)).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert!(after.contains(&"c5=new".to_string()));
    assert!(after.contains(&"c55=inserted".to_string()));
    assert!(!after.iter().any(|s| s.starts_with("c6=") || s.starts_with("c8=")));
}

fn scan_consistent_stops_at_the_first_error(e: &dyn KvEngine) {
    let p = 0x60;
    for i in 0..5 {
        put(e, k(p, &format!("e{i}")), "v");
    }
    let mut visited = 0;
    let res = e.scan_consistent(&[p], &[p + 1], &mut |_, _| {
        visited += 1;
        if visited == 3 {
            return Err(StorageError::corrupt("visitor", "stop here"));
        }
        Ok(())
    });
    assert!(matches!(res, Err(StorageError::Corrupt { .. })), "{res:?}");
    assert_eq!(visited, 3);
}

fn last_in_range_finds_the_greatest_key(e: &dyn KvEngine) {
    let p = 0x70;
    assert_eq!(e.last_in_range(&[p], &[p + 1]).unwrap(), None);
    for key in ["m", "a", "z", "zz"] {
        put(e, k(p, key), key);
    }
    let (key, value) = e.last_in_range(&[p], &[p + 1]).unwrap().unwrap();
    assert_eq!((key, value), (k(p, "zz"), b"zz".to_vec()));
    let (key, _) = e.last_in_range(&[p], &k(p, "zz")).unwrap().unwrap();
    assert_eq!(key, k(p, "z"));
    assert_eq!(e.last_in_range(&k(p, "b"), &k(p, "l")).unwrap(), None);
    assert_eq!(e.last_in_range(&k(p, "z"), &k(p, "a")).unwrap(), None);
}

fn synced_writes_and_wal_flushes_succeed(e: &dyn KvEngine) {
    let p = 0x80;
    let mut b = WriteBatch::new();
    b.put(k(p, "s"), b"1".to_vec());
    e.write(&b, true).unwrap();
    e.flush_wal(false).unwrap();
    e.flush_wal(true).unwrap();
    assert_eq!(e.get(&k(p, "s")).unwrap(), Some(b"1".to_vec()));
}
