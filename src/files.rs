//! Model files as untrusted input: every file quantd reads from the models directory goes
//! through [`read_regular`]. Runs on whichever thread loads (the registry's control thread, the
//! CLI tools).
//!
//! A models directory is written by people and scripts, and a wrong file copied into it must
//! not stall the control plane or exhaust memory. So:
//! - only regular files are read: a FIFO, a device (`/dev/zero`) or a socket is refused without
//!   blocking (the file is opened `O_NONBLOCK` and checked with `fstat` before any read);
//! - **symlinks are never followed** under the models directory: a symlinked `model.onnx`,
//!   manifest or version directory is refused, with the reason listed (`O_NOFOLLOW` on files,
//!   `symlink_metadata` on directories). Mount the directory itself wherever you like; inside
//!   it, copy files;
//! - each file is read under a size limit (`registry.max_model_bytes`,
//!   `registry.max_manifest_bytes`); a file that grows past it while being read is refused too.

use std::fs::OpenOptions;
use std::io::{Error, ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Size limits on what is read from a models directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLimits {
    /// Largest `model.onnx` (and verification set) read, bytes.
    pub max_model_bytes: u64,
    /// Largest `manifest.toml` read, bytes (it bounds the golden rows too).
    pub max_manifest_bytes: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self { max_model_bytes: 256 << 20, max_manifest_bytes: 1 << 20 }
    }
}

/// Most golden rows a manifest may carry (they are run at every load).
pub const MAX_GOLDEN_ROWS: usize = 1_024;

/// What kind of non-regular file a path is, for the error.
fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Reads `path` whole if it is a regular file (not a symlink) of at most `limit` bytes. Never
/// blocks on a FIFO or device; the errors say which rule was broken.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::new(
                ErrorKind::InvalidInput,
                "is a symlink; quantd does not follow symlinks inside the models directory (copy the file)",
            ),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("is {}, not a regular file", kind_of(meta.file_type())),
        ));
    }
    if meta.len() > limit {
        return Err(Error::new(ErrorKind::InvalidData, format!("is {} bytes, over the limit of {limit}", meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("grew past the limit of {limit} bytes while being read"),
        ));
    }
    Ok(bytes)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_text(path: &Path, limit: u64) -> Result<String, Error> {
    String::from_utf8(read_regular(path, limit)?).map_err(|_| Error::new(ErrorKind::InvalidData, "is not UTF-8 text"))
}

/// Whether `dir` is a real directory, not a symlink to one (`Err` says why not).
pub fn real_dir(dir: &Path) -> Result<(), Error> {
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "is a symlink; quantd does not follow symlinks inside the models directory (copy or move the directory)",
        ));
    }
    if !meta.is_dir() {
        return Err(Error::new(ErrorKind::InvalidInput, format!("is {}, not a directory", kind_of(meta.file_type()))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_within_the_limit_are_read_and_everything_else_refused_at_once() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("model.onnx");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_regular(&file, 5).unwrap(), b"12345");
        let e = read_regular(&file, 4).unwrap_err();
        assert!(e.to_string().contains("over the limit of 4"), "{e}");

        let link = d.path().join("link.onnx");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(read_regular(&link, 100).unwrap_err().to_string().contains("symlink"));

        let fifo = d.path().join("fifo.onnx");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t0 = std::time::Instant::now();
        let e = read_regular(&fifo, 100).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(1), "a FIFO must not block");

        let e = read_regular(Path::new("/dev/zero"), 100).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");

        assert!(real_dir(d.path()).is_ok());
        let dlink = d.path().join("v2");
        std::os::unix::fs::symlink(d.path(), &dlink).unwrap();
        assert!(real_dir(&dlink).unwrap_err().to_string().contains("symlink"));
        assert!(real_dir(&file).is_err());
    }
}
