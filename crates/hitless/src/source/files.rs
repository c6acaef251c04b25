//! Reading files as one consistent unit.
//!
//! A credential made of several files is read file by file, then each file's identity
//! (device, inode, size, modification time, through symlinks) is taken again: if any changed
//! while reading, the read is not trusted (a writer was busy) and is retried later.
//!
//! Each file is opened without blocking and judged by its open descriptor (`fstat`): only a
//! regular file of bounded size is read, so a named pipe or a device put in a credential's
//! place is refused with the reason instead of hanging or flooding the reader.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::Error;

/// What identifies one version of a file without reading it: what `poll` compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: Option<SystemTime>,
}

impl FileStamp {
    /// The stamp of the file `path` points to (symlinks followed).
    pub(crate) fn of(path: &Path) -> Result<FileStamp, Error> {
        let meta = fs::metadata(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::from_meta(&meta))
    }

    #[cfg(unix)]
    fn from_meta(meta: &fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: meta.modified().ok(),
        }
    }

    #[cfg(not(unix))]
    fn from_meta(meta: &fs::Metadata) -> FileStamp {
        FileStamp {
            dev: 0,
            ino: 0,
            size: meta.len(),
            mtime: meta.modified().ok(),
        }
    }
}

/// The bytes of every file of a credential, read as one unit.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// `(path, contents)` in reading order.
    pub(crate) files: Vec<(PathBuf, Vec<u8>)>,
    /// The permission bits of each file read (same order as `files`; `None` off Unix), taken
    /// from the descriptor the bytes were read through.
    pub(crate) modes: Vec<Option<u32>>,
    /// SHA-256 over all paths and contents: equal digests mean nothing changed.
    pub(crate) digest: [u8; 32],
}

impl Snapshot {
    /// The contents of `path` (which must be one of the files read).
    pub(crate) fn contents(&self, path: &Path) -> &[u8] {
        self.files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, c)| c.as_slice())
            .unwrap_or(&[])
    }

    /// The permission bits of `path` as read, if known.
    pub(crate) fn mode(&self, path: &Path) -> Option<u32> {
        self.files
            .iter()
            .zip(&self.modes)
            .find(|((p, _), _)| p == path)
            .and_then(|(_, m)| *m)
    }
}

/// Reads `paths` (duplicates read once) and checks that none changed while reading.
pub(crate) fn read_stable(paths: &[&Path]) -> Result<Snapshot, Error> {
    let mut unique: Vec<&Path> = Vec::with_capacity(paths.len());
    for p in paths {
        if !unique.contains(p) {
            unique.push(p);
        }
    }
    let mut before = Vec::with_capacity(unique.len());
    for p in &unique {
        before.push(FileStamp::of(p)?);
    }
    let mut files = Vec::with_capacity(unique.len());
    let mut modes = Vec::with_capacity(unique.len());
    let mut hasher = Sha256::new();
    for p in &unique {
        let Read { contents, mode } = read_regular(p)?;
        modes.push(mode);
        let name = p.as_os_str().as_encoded_bytes();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update((contents.len() as u64).to_le_bytes());
        hasher.update(&contents);
        files.push((p.to_path_buf(), contents));
    }
    for (p, stamp) in unique.iter().zip(&before) {
        if FileStamp::of(p)? != *stamp {
            return Err(Error::Unstable {
                path: p.to_path_buf(),
            });
        }
    }
    Ok(Snapshot {
        files,
        modes,
        digest: hasher.finalize().into(),
    })
}

/// The largest credential file read (CRLs of large CAs run to tens of MiB).
const MAX_FILE_SIZE: u64 = 256 * 1024 * 1024;

/// Opens `path` (symlinks followed) without ever blocking: with `O_NONBLOCK`, opening a named
/// pipe returns at once instead of waiting for a writer.
#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<fs::File> {
    fs::File::open(path)
}

/// What a file that is not a regular file is, for error messages.
fn kind_of(file_type: fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a named pipe";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_char_device() || file_type.is_block_device() {
            return "a device";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// One file as read: its bytes and the permission bits of the very file they came from.
struct Read {
    contents: Vec<u8>,
    mode: Option<u32>,
}

/// Reads a regular file (symlinks followed) of at most [`MAX_FILE_SIZE`]. The type and size
/// are checked on the *open descriptor* (`fstat`), not on the path: a named pipe or a device
/// swapped in between a check by path and the open would otherwise block the reader forever
/// or feed it endlessly. The open itself never blocks (`O_NONBLOCK`).
fn read_regular(path: &Path) -> Result<Read, Error> {
    use std::io::Read as _;
    let read_error = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = open_nonblocking(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(read_error(std::io::Error::other(format!(
            "{} instead of a regular file",
            kind_of(meta.file_type())
        ))));
    }
    if meta.len() > MAX_FILE_SIZE {
        return Err(read_error(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_FILE_SIZE / (1024 * 1024)
        ))));
    }
    let mut contents = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut contents)
        .map_err(read_error)?;
    if contents.len() as u64 > MAX_FILE_SIZE {
        return Err(read_error(std::io::Error::other(
            "grew past the size limit while read",
        )));
    }
    Ok(Read {
        contents,
        mode: mode_of(&meta),
    })
}

#[cfg(unix)]
fn mode_of(meta: &fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    Some(meta.permissions().mode() & 0o7777)
}

#[cfg(not(unix))]
fn mode_of(_meta: &fs::Metadata) -> Option<u32> {
    None
}

/// Stamps of `paths`, `None` for a file that cannot be stat'ed (missing, ...).
pub(crate) fn stamps(paths: &[PathBuf]) -> Vec<Option<FileStamp>> {
    paths.iter().map(|p| FileStamp::of(p).ok()).collect()
}

/// Permission bits that let group or others read a file: a secret (private key, PKCS#12
/// identity, password) should be 0600 or 0400.
pub(crate) const READABLE_BY_OTHERS: u32 = 0o044;
/// Permission bits that let group or others write a file: whoever can write a credential or a
/// trust file decides who is trusted.
pub(crate) const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Every path whose change can change what `path` reads: the path itself, and each hop of its
/// symlink chain (so a Kubernetes `..data` swap or a certbot `live/` relink is seen), ending
/// with the file finally read.
pub(crate) fn symlink_chain(path: &Path) -> Vec<PathBuf> {
    let mut chain = vec![path.to_path_buf()];
    let mut current = path.to_path_buf();
    // Resolve each symlink component of the path, bounded to avoid loops.
    for _ in 0..16 {
        let mut next = None;
        // Find the first component (from the root) that is a symlink.
        let mut prefix = PathBuf::new();
        let comps: Vec<_> = current.components().collect();
        for (i, comp) in comps.iter().enumerate() {
            prefix.push(comp);
            let Ok(meta) = fs::symlink_metadata(&prefix) else {
                break;
            };
            if meta.file_type().is_symlink() {
                let Ok(target) = fs::read_link(&prefix) else {
                    break;
                };
                let base = prefix.parent().map(Path::to_path_buf).unwrap_or_default();
                let mut resolved = if target.is_absolute() {
                    target
                } else {
                    base.join(target)
                };
                for rest in &comps[i + 1..] {
                    resolved.push(rest);
                }
                if !chain.contains(&prefix) {
                    chain.push(prefix.clone());
                }
                next = Some(resolved);
                break;
            }
        }
        match next {
            Some(n) => {
                chain.push(n.clone());
                current = n;
            }
            None => break,
        }
    }
    chain.dedup();
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_chain_follows_k8s_layout() {
        let dir = tempfile::tempdir().unwrap();
        let ts = dir.path().join("..2026_01_01");
        fs::create_dir(&ts).unwrap();
        fs::write(ts.join("tls.crt"), b"x").unwrap();
        std::os::unix::fs::symlink("..2026_01_01", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/tls.crt", dir.path().join("tls.crt")).unwrap();
        let chain = symlink_chain(&dir.path().join("tls.crt"));
        assert!(chain.contains(&dir.path().join("tls.crt")));
        assert!(chain.contains(&dir.path().join("..data")));
        assert!(
            chain.iter().any(|p| p.ends_with("..2026_01_01/tls.crt")),
            "{chain:?}"
        );
    }

    #[test]
    fn read_stable_reads_each_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, b"hello").unwrap();
        let snap = read_stable(&[&a, &a]).unwrap();
        assert_eq!(snap.files.len(), 1);
        assert_eq!(snap.contents(&a), b"hello");
        let missing = dir.path().join("missing");
        let err = read_stable(&[&missing]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
