//! The one versioned value codec: every value the storage layer writes goes through here.
//!
//! A value is `[FORMAT_VERSION: u8] ++ bincode-2(serde)`, encoded with
//! `config::standard().with_limit::<MAX_VALUE>()`. The limit matters on decode: without it a
//! corrupt length prefix ("length bomb") makes bincode try to allocate exabytes and the process
//! aborts. A value that does not decode is an error, never "absent".

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StorageError;

/// The storage format version written in front of every value.
pub const FORMAT_VERSION: u8 = 1;

/// The largest encoded value, and the largest length any decoder accepts (64 MiB).
pub const MAX_VALUE: usize = 64 * 1024 * 1024;

/// Initial buffer of [`encode`] (bytes).
const ENCODE_CAPACITY: usize = 256;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_VALUE>()
}

/// Encodes `value` as `[FORMAT_VERSION] ++ bincode`.
///
/// Fails with [`StorageError::Rejected`] if the value's `Serialize` fails or the encoding is larger
/// than [`MAX_VALUE`] (it could never be decoded again).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StorageError> {
    let what = || std::any::type_name::<T>().to_string();
    // Most values (commands, session records, queued messages) fit: no regrowth while encoding.
    let mut out = Vec::with_capacity(ENCODE_CAPACITY);
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| StorageError::Rejected { what: what(), detail: e.to_string() })?;
    if out.len() - 1 > MAX_VALUE {
        return Err(StorageError::Rejected {
            what: what(),
            detail: format!("{} bytes exceed the {MAX_VALUE}-byte value limit", out.len() - 1),
        });
    }
    Ok(out)
}

/// Decodes a value written by [`encode`]; `what` names it in errors (for example the key).
///
/// Empty input, an unknown older format and malformed or trailing bytes are
/// [`StorageError::Corrupt`]; a format newer than [`FORMAT_VERSION`] is
/// [`StorageError::NewerFormat`]. Never panics, whatever the input.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StorageError> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err(StorageError::corrupt(what, "empty value (no format version byte)"));
    };
    if version > FORMAT_VERSION {
        return Err(StorageError::NewerFormat {
            what: what.to_string(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version != FORMAT_VERSION {
        return Err(StorageError::corrupt(what, format!("unknown storage format version {version}")));
    }
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(body, config())
        .map_err(|e| StorageError::corrupt(what, format!("undecodable value: {e}")))?;
    if used != body.len() {
        return Err(StorageError::corrupt(
            what,
            format!("{} trailing bytes after a {used}-byte value", body.len() - used),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::Rng;
    use rand::SeedableRng;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        id: u64,
        name: String,
        payload: Vec<u8>,
        tags: BTreeMap<String, Vec<u32>>,
        parent: Option<Box<Sample>>,
    }

    fn sample() -> Sample {
        Sample {
            id: 42,
            name: "dev/1".into(),
            payload: vec![1, 2, 3],
            tags: BTreeMap::from([("a".into(), vec![1, 2])]),
            parent: Some(Box::new(Sample {
                id: 1,
                name: String::new(),
                payload: vec![],
                tags: BTreeMap::new(),
                parent: None,
            })),
        }
    }

    /// The seed comes from `IRONHUB_TEST_SEED` if set, and is printed so a failure can be replayed.
    fn seeded_rng() -> rand::rngs::StdRng {
        let seed = std::env::var("IRONHUB_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::rng().random());
        eprintln!("codec fuzz seed: {seed} (set IRONHUB_TEST_SEED to replay)");
        rand::rngs::StdRng::seed_from_u64(seed)
    }

    #[test]
    fn round_trip() {
        let v = sample();
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<Sample>(&bytes, "sample").unwrap(), v);
    }

    #[test]
    fn empty_older_newer_and_trailing_are_errors() {
        assert!(matches!(decode::<u64>(&[], "k"), Err(StorageError::Corrupt { .. })));
        assert!(matches!(decode::<u64>(&[0, 1], "k"), Err(StorageError::Corrupt { .. })));
        assert!(matches!(
            decode::<u64>(&[2, 1], "k"),
            Err(StorageError::NewerFormat { found: 2, supported: 1, .. })
        ));
        let mut bytes = encode(&7u64).unwrap();
        bytes.push(0);
        let err = decode::<u64>(&bytes, "key x").unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
        assert!(err.to_string().contains("key x"), "{err}");
    }

    #[test]
    fn oversize_values_are_refused_on_encode() {
        let big = vec![0u8; MAX_VALUE + 1];
        assert!(matches!(encode(&big), Err(StorageError::Rejected { .. })));
    }

    #[test]
    fn length_bomb_is_an_error_not_an_allocation() {
        // Version, then a varint length of u64::MAX for the Vec<u8>.
        let bomb = [FORMAT_VERSION, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(matches!(decode::<Vec<u8>>(&bomb, "bomb"), Err(StorageError::Corrupt { .. })));
        assert!(matches!(decode::<String>(&bomb, "bomb"), Err(StorageError::Corrupt { .. })));
        assert!(matches!(decode::<Sample>(&bomb, "bomb"), Err(StorageError::Corrupt { .. })));
    }

    /// Decodes many random and mutated inputs; it must return, never panic.
    fn decode_random_inputs(rounds: usize) {
        let mut rng = seeded_rng();
        let valid = encode(&sample()).unwrap();
        for _ in 0..rounds {
            let input: Vec<u8> = if rng.random_bool(0.5) {
                let len = rng.random_range(0..64);
                let mut v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if !v.is_empty() && rng.random_bool(0.8) {
                    v[0] = FORMAT_VERSION;
                }
                v
            } else {
                let mut v = valid.clone();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..v.len());
                    v[i] = rng.random();
                }
                v.truncate(rng.random_range(0..=v.len()));
                v
            };
            let _ = decode::<Sample>(&input, "random");
            let _ = decode::<Vec<String>>(&input, "random");
            let _ = decode::<BTreeMap<u64, Vec<u8>>>(&input, "random");
            let _ = decode::<(u8, String, Option<Vec<u64>>)>(&input, "random");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        decode_random_inputs(20_000);
    }

    const CHILD_ENV: &str = "IRONHUB_CODEC_FUZZ_CHILD";

    /// Runs the random decoding in a child process (this test binary re-invoked), so that an
    /// abort on a huge allocation — which no `catch_unwind` can observe — fails the test.
    #[test]
    fn random_bytes_never_abort_the_process() {
        if std::env::var_os(CHILD_ENV).is_some() {
            decode_random_inputs(50_000);
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "codec::tests::random_bytes_never_abort_the_process", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "decoding random bytes killed the child process: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}
