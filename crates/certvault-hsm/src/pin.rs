//! Reading the token PIN from a file or an environment variable.

use std::io::Read;
use std::path::Path;

use zeroize::{Zeroize, Zeroizing};

use crate::HsmError;

/// Longest PIN accepted from a file, in bytes (PKCS#11 tokens allow far fewer).
const MAX_PIN_FILE: u64 = 4096;

/// Reads the user PIN of the token, from `file` if given, otherwise from the environment
/// variable named `env`.
///
/// One trailing line ending (`\n` or `\r\n`) is removed; nothing else is trimmed, so a PIN may
/// contain spaces. The PIN must be valid UTF-8 and not empty. On Unix a PIN file that group or
/// others can access in any way (`mode & 0o077 != 0`) is refused: `chmod 600` it.
///
/// The PIN is never taken from a command-line value, which `ps` would show. Note that an
/// environment variable stays visible in `/proc/<pid>/environ` to the same user for the
/// process's lifetime; prefer a file.
///
/// Errors: [`HsmError::Pin`] naming the file or variable (never the PIN).
pub fn read_pin(file: Option<&Path>, env: Option<&str>) -> Result<Zeroizing<String>, HsmError> {
    let pin = match (file, env) {
        (Some(path), _) => read_pin_file(path)?,
        (None, Some(var)) => {
            let value = std::env::var_os(var).ok_or_else(|| {
                HsmError::Pin(format!("the environment variable {var} is not set"))
            })?;
            let value = value.into_string().map_err(|mut v| {
                v.zeroize_os();
                HsmError::Pin(format!("the environment variable {var} is not valid UTF-8"))
            })?;
            finish(
                Zeroizing::new(value),
                &format!("environment variable {var}"),
            )?
        }
        (None, None) => {
            return Err(HsmError::Pin(
                "no PIN source configured (give a PIN file or an environment variable)".to_string(),
            ));
        }
    };
    Ok(pin)
}

/// Best-effort wipe of an `OsString` that was not valid UTF-8.
trait ZeroizeOs {
    fn zeroize_os(&mut self);
}

impl ZeroizeOs for std::ffi::OsString {
    fn zeroize_os(&mut self) {
        let mut bytes = std::mem::take(self).into_encoded_bytes();
        bytes.zeroize();
    }
}

fn read_pin_file(path: &Path) -> Result<Zeroizing<String>, HsmError> {
    let shown = path.display();
    let mut f = std::fs::File::open(path)
        .map_err(|e| HsmError::Pin(format!("cannot open PIN file {shown}: {e}")))?;
    let meta = f
        .metadata()
        .map_err(|e| HsmError::Pin(format!("cannot read PIN file {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(HsmError::Pin(format!(
            "PIN file {shown} is not a regular file"
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(HsmError::Pin(format!(
                "PIN file {shown} is accessible by group or others (mode {mode:04o}); \
                 restrict it with `chmod 600 {shown}`"
            )));
        }
    }
    if meta.len() > MAX_PIN_FILE {
        return Err(HsmError::Pin(format!("PIN file {shown} is too large")));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_PIN_FILE as usize + 1));
    f.by_ref()
        .take(MAX_PIN_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| HsmError::Pin(format!("cannot read PIN file {shown}: {e}")))?;
    if buf.len() as u64 > MAX_PIN_FILE {
        return Err(HsmError::Pin(format!("PIN file {shown} is too large")));
    }
    let text = match String::from_utf8(std::mem::take(&mut *buf)) {
        Ok(t) => Zeroizing::new(t),
        Err(e) => {
            let mut bytes = e.into_bytes();
            bytes.zeroize();
            return Err(HsmError::Pin(format!(
                "PIN file {shown} is not valid UTF-8"
            )));
        }
    };
    finish(text, &format!("PIN file {shown}"))
}

/// Removes one trailing line ending and refuses an empty PIN.
fn finish(mut pin: Zeroizing<String>, source: &str) -> Result<Zeroizing<String>, HsmError> {
    let keep = pin
        .strip_suffix("\r\n")
        .or_else(|| pin.strip_suffix('\n'))
        .map(str::len);
    if let Some(len) = keep {
        pin.truncate(len);
    }
    if pin.is_empty() {
        return Err(HsmError::Pin(format!("the {source} holds an empty PIN")));
    }
    Ok(pin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, content: &[u8], mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn file_pins() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a", b"12 34\n", 0o600);
        assert_eq!(read_pin(Some(&p), None).unwrap().as_str(), "12 34");
        let p = write(dir.path(), "b", b"abcd\r\n", 0o400);
        assert_eq!(
            read_pin(Some(&p), Some("IGNORED")).unwrap().as_str(),
            "abcd"
        );
        let p = write(dir.path(), "c", b"abcd", 0o600);
        assert_eq!(read_pin(Some(&p), None).unwrap().as_str(), "abcd");
        // Only one line ending is removed.
        let p = write(dir.path(), "d", b"abcd\n\n", 0o600);
        assert_eq!(read_pin(Some(&p), None).unwrap().as_str(), "abcd\n");
    }

    #[test]
    fn file_refusals() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o610] {
            let p = write(dir.path(), "w", b"secret-pin-value\n", mode);
            let e = read_pin(Some(&p), None).unwrap_err().to_string();
            assert!(e.contains("accessible by group or others"), "{e}");
            assert!(e.contains("chmod 600"), "{e}");
            assert!(!e.contains("secret-pin-value"), "{e}");
        }
        let p = write(dir.path(), "e", b"\n", 0o600);
        let e = read_pin(Some(&p), None).unwrap_err().to_string();
        assert!(e.contains("empty PIN"), "{e}");
        let p = write(dir.path(), "u", b"\xff\xfe\n", 0o600);
        let e = read_pin(Some(&p), None).unwrap_err().to_string();
        assert!(e.contains("not valid UTF-8"), "{e}");
        let e = read_pin(Some(&dir.path().join("missing")), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot open PIN file"), "{e}");
        let e = read_pin(Some(dir.path()), None).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn env_and_none() {
        // PATH is always set and never empty; the env path is tested against the real
        // environment because setting variables is unsafe in edition 2024.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(read_pin(None, Some("PATH")).unwrap().as_str(), path);
        let e = read_pin(None, Some("CERTVAULT_SURELY_UNSET_VARIABLE_1"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CERTVAULT_SURELY_UNSET_VARIABLE_1 is not set"),
            "{e}"
        );
        let e = read_pin(None, None).unwrap_err().to_string();
        assert!(e.contains("no PIN source"), "{e}");
    }
}
