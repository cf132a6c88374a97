//! Reading the small files settings name (trust bundles, tokens, session
//! policies, certificates): regular files only, within a size cap, so a
//! device or a FIFO named by mistake (`/dev/zero`, a pipe) fails at once
//! instead of filling memory or hanging the start.

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The whole of a regular file of at most `cap` bytes (symbolic links
/// followed, as the kubelet's mounted Secrets and ConfigMaps need).
///
/// The file is opened first and its type read from the open file: a check
/// by path before opening leaves a moment in which a FIFO swapped in would
/// block the open. Opening without blocking does nothing to a regular
/// file's reads, and an open FIFO is refused before anything is read (a
/// terminal, opened, never becomes the process's controlling one).
pub fn read_small(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let not_regular = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file (a device, a pipe or a socket)",
        )
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        // A socket cannot be opened at all ("no such device or address").
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Err(not_regular()),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory, not a file",
        ));
    }
    if !meta.is_file() {
        return Err(not_regular());
    }
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("is larger than the {cap} bytes such a file may hold"),
        )
    };
    if meta.len() > cap {
        return Err(too_large());
    }
    // The file may have grown since: read no more than the cap allows.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read_small`] as UTF-8 text.
pub fn read_small_text(path: &Path, cap: u64) -> io::Result<String> {
    String::from_utf8(read_small(path, cap)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_pipes_directories_and_large_files_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, "abc").unwrap();
        assert_eq!(read_small(&small, 3).unwrap(), b"abc");
        let e = read_small(&small, 2).unwrap_err().to_string();
        assert!(e.contains("larger than the 2 bytes"), "{e}");
        let e = read_small(Path::new("/dev/zero"), 1024)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read_small(dir.path(), 1024).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        // A FIFO: opening it would block until a writer came.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = read_small(&fifo, 1024).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let e = read_small(&socket, 1024).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        // Through a symbolic link, as in a mounted Secret.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&small, &link).unwrap();
        assert_eq!(read_small_text(&link, 3).unwrap(), "abc");
    }
}
