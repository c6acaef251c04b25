//! Reading the command's own input files (configuration, `probe`'s CA and CRL) so that no path
//! can hang or flood it: a named pipe, a device such as `/dev/zero`, or a huge file is refused
//! with the reason, at once.
//!
//! Credentials served by the library are read by the library (`hitless::source`), with the
//! same rules.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Reads the regular file at `path` (symlinks followed), at most `limit` bytes.
///
/// The open never blocks (`O_NONBLOCK`: a named pipe without a writer would otherwise block it
/// forever), and the type and size are checked on the open descriptor (`fstat`), not by path,
/// so nothing can be swapped in between the check and the read.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = open_nonblocking(path)?;
    let meta = file.metadata()?;
    let file_type = meta.file_type();
    if !file_type.is_file() {
        let what = if file_type.is_fifo() {
            "a named pipe"
        } else if file_type.is_char_device() || file_type.is_block_device() {
            "a device"
        } else if file_type.is_socket() {
            "a socket"
        } else if file_type.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(io::Error::other(format!(
            "{what} instead of a regular file"
        )));
    }
    if meta.len() > limit {
        return Err(too_large(limit));
    }
    let mut contents = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut contents)?;
    if contents.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(contents)
}

/// [`read_regular`] of a UTF-8 text file.
pub fn read_text(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, limit)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn open_nonblocking(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

fn too_large(limit: u64) -> io::Error {
    io::Error::other(format!("larger than {} KiB", limit / 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_bounded_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, b"hello").unwrap();
        assert_eq!(read_regular(&small, 5).unwrap(), b"hello");
        let err = read_regular(&small, 4).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");

        let err = read_regular(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("a device"), "{err}");
        let err = read_regular(dir.path(), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");

        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Returns at once (no writer will ever come), saying what the file is.
        let err = read_regular(&fifo, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("named pipe"), "{err}");
    }
}
