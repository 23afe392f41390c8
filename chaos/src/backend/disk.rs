//! Small tmpfs data dirs, so the `disk-full` fault can fill a node's disk for real.
//!
//! [`Tmpfs::mount`] mounts a tmpfs of a given size on a node's data dir (root only: `mount -t tmpfs`);
//! [`Tmpfs::fill`] writes a filler file until the file system answers ENOSPC (every byte the
//! node could have used is taken), [`Tmpfs::free`] deletes it. Dropping the value unmounts (lazily
//! if something still holds it open), so a failed run leaves no mount behind; a SIGKILLed tool
//! does (`grep ironhub-chaos /proc/mounts`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The filler file's name, in the data dir's root.
pub const FILLER: &str = "chaos-disk-filler";

/// A mounted tmpfs (unmounted on drop).
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
    mounted: bool,
}

/// Whether this process runs as root (mounting needs it): the effective uid in /proc/self/status.
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

impl Tmpfs {
    /// Creates `dir` and mounts a tmpfs of `size_mb` MiB on it.
    pub fn mount(dir: &Path, size_mb: u64) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m,mode=0755"), "tmpfs"])
            .arg(dir)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mount -t tmpfs -o size={size_mb}m tmpfs {}: {} (the disk-full fault needs root)",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Tmpfs { dir: dir.to_path_buf(), mounted: true })
    }

    /// Fills the file system with a filler file until it is full; returns the bytes written.
    pub fn fill(&self) -> anyhow::Result<u64> {
        let p = self.dir.join(FILLER);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .with_context(|| format!("creating {}", p.display()))?;
        let mut written = 0u64;
        // Large blocks first, then small ones for the last bytes a block did not fit in.
        for block in [1 << 20, 4096, 1] {
            let buf = vec![0u8; block];
            loop {
                match f.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(e) => return Err(e).with_context(|| format!("writing {}", p.display())),
                }
            }
        }
        Ok(written)
    }

    /// Deletes the filler; returns the bytes it held (0 when there was none).
    pub fn free(&self) -> anyhow::Result<u64> {
        let p = self.dir.join(FILLER);
        let len = match std::fs::metadata(&p) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        Ok(len)
    }

    /// (used, total) bytes of the file system (`df`).
    pub fn usage(&self) -> anyhow::Result<(u64, u64)> {
        let out = Command::new("df")
            .args(["-B1", "--output=used,size"])
            .arg(&self.dir)
            .output()
            .context("running df")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let nums: Vec<u64> = text
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        match nums.as_slice() {
            [used, size] => Ok((*used, *size)),
            _ => bail!("df {}: unexpected output {text:?}", self.dir.display()),
        }
    }

    /// Unmounts (lazily if busy). Idempotent; errors are printed, not returned (it runs on drop).
    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        let ok = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
        if !ok {
            let lazy = Command::new("umount").arg("-l").arg(&self.dir).status().is_ok_and(|s| s.success());
            if !lazy {
                eprintln!("ironhub-chaos: could not unmount the tmpfs on {}", self.dir.display());
            }
        }
        self.mounted = false;
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        self.unmount();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root only (skipped with a message otherwise): a 4 MiB tmpfs is filled to the last byte,
    /// freed, and unmounted on drop.
    #[test]
    fn a_tmpfs_is_filled_freed_and_unmounted() {
        if !is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("n1");
        let t = Tmpfs::mount(&dir, 4).unwrap();
        std::fs::write(dir.join("data"), b"x").unwrap();
        let filled = t.fill().unwrap();
        assert!(filled > 3 << 20, "{filled}");
        let (used, total) = t.usage().unwrap();
        assert_eq!(used, total, "full");
        let e = std::fs::write(dir.join("more"), b"y").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(t.free().unwrap(), filled);
        assert_eq!(t.free().unwrap(), 0);
        std::fs::write(dir.join("more"), b"y").unwrap();
        drop(t);
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        assert!(!mounts.contains(dir.to_str().unwrap()), "still mounted");
    }
}
