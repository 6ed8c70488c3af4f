//! Ed25519 signatures of model manifests: key generation, signing (the `quantd keygen` and
//! `quantd sign` tools) and the check a server makes before loading a model when a public key
//! is configured.
//!
//! The signature covers the exact bytes of `manifest.toml`, which names the model file and its
//! sha256, so one signature pins both. It lives beside the manifest in `manifest.toml.sig`.
//! Keys and signatures are hex text files: a public key is 32 bytes, a secret key the 32-byte
//! seed, a signature 64 bytes. Runs on the control path (registry thread, tools).

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// The manifest of a model version directory: the file a signature covers.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// The signature file beside `manifest.toml`.
pub const SIGNATURE_FILE: &str = "manifest.toml.sig";

/// Why a key or signature could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key or signature is not the hex of the right length.
    #[error("{path}: {what} must be {len} bytes as hex ({msg})")]
    Format {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
        /// The bytes it should have.
        len: usize,
        /// What is wrong.
        msg: String,
    },
    /// The key file exists already.
    #[error("{path}: refusing to overwrite an existing key")]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

fn read_hex<const N: usize>(path: &Path, what: &'static str) -> Result<[u8; N], SigningError> {
    let text = std::fs::read_to_string(path).map_err(|source| SigningError::Io { path: path.to_owned(), source })?;
    let format = |msg: String| SigningError::Format { path: path.to_owned(), what, len: N, msg };
    let bytes = hex::decode(text.trim()).map_err(|e| format(e.to_string()))?;
    bytes.try_into().map_err(|b: Vec<u8>| format(format!("found {} bytes", b.len())))
}

/// Reads a public key file (64 hex digits).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, SigningError> {
    let bytes = read_hex::<32>(path, "an ed25519 public key")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| SigningError::Format {
        path: path.to_owned(),
        what: "an ed25519 public key",
        len: 32,
        msg: e.to_string(),
    })
}

/// Reads a secret key file (the 32-byte seed, 64 hex digits).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, SigningError> {
    Ok(SigningKey::from_bytes(&read_hex::<32>(path, "an ed25519 secret key")?))
}

/// Writes a new key pair to `<prefix>.key` (mode 0600) and `<prefix>.pub`; never overwrites.
pub fn generate(prefix: &Path) -> Result<(PathBuf, PathBuf), SigningError> {
    let secret = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    for p in [&secret, &public] {
        if p.exists() {
            return Err(SigningError::Exists { path: p.clone() });
        }
    }
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    write_private(&secret, &format!("{}\n", hex::encode(key.to_bytes())))?;
    std::fs::write(&public, format!("{}\n", hex::encode(key.verifying_key().to_bytes())))
        .map_err(|source| SigningError::Io { path: public.clone(), source })?;
    Ok((secret, public))
}

fn write_private(path: &Path, text: &str) -> Result<(), SigningError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| SigningError::Io { path: path.to_owned(), source };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

/// Signs `dir/manifest.toml` and writes `dir/manifest.toml.sig`.
pub fn sign(dir: &Path, key: &SigningKey) -> Result<PathBuf, SigningError> {
    let manifest = dir.join(MANIFEST_FILE);
    let limit = crate::files::FileLimits::default().max_manifest_bytes;
    let bytes = crate::files::read_regular(&manifest, limit)
        .map_err(|source| SigningError::Io { path: manifest.clone(), source })?;
    let sig = key.sign(&bytes);
    let out = dir.join(SIGNATURE_FILE);
    std::fs::write(&out, format!("{}\n", hex::encode(sig.to_bytes())))
        .map_err(|source| SigningError::Io { path: out.clone(), source })?;
    Ok(out)
}

/// Checks `manifest_bytes` (the manifest as read for loading) against `dir`'s signature file.
/// `Err` says why the model must be refused.
pub fn verify(dir: &Path, manifest_bytes: &[u8], key: &VerifyingKey) -> Result<(), String> {
    let path = dir.join(SIGNATURE_FILE);
    if !path.exists() {
        return Err(format!("unsigned: {SIGNATURE_FILE} is missing and a model public key is configured"));
    }
    let bytes = read_hex::<64>(&path, "an ed25519 signature").map_err(|e| e.to_string())?;
    key.verify(manifest_bytes, &Signature::from_bytes(&bytes))
        .map_err(|_| format!("{SIGNATURE_FILE} is not a valid signature of manifest.toml by the configured public key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_and_tampering_is_caught() {
        let d = tempfile::tempdir().unwrap();
        let (secret, public) = generate(&d.path().join("k")).unwrap();
        assert!(generate(&d.path().join("k")).is_err(), "never overwrites a key");
        let key = read_signing_key(&secret).unwrap();
        let pubkey = read_public_key(&public).unwrap();
        let manifest = d.path().join(MANIFEST_FILE);
        std::fs::write(&manifest, "name = \"m\"\n").unwrap();
        assert!(verify(d.path(), b"name = \"m\"\n", &pubkey).unwrap_err().contains("unsigned"));
        sign(d.path(), &key).unwrap();
        verify(d.path(), b"name = \"m\"\n", &pubkey).unwrap();
        assert!(verify(d.path(), b"name = \"n\"\n", &pubkey).is_err());
        let other = read_public_key(&generate(&d.path().join("other")).unwrap().1).unwrap();
        assert!(verify(d.path(), b"name = \"m\"\n", &other).is_err());
        std::fs::write(d.path().join(SIGNATURE_FILE), "zz\n").unwrap();
        assert!(verify(d.path(), b"name = \"m\"\n", &pubkey).unwrap_err().contains("hex"));
    }

    #[test]
    fn a_short_key_file_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.pub");
        std::fs::write(&p, "abcd\n").unwrap();
        let e = read_public_key(&p).unwrap_err().to_string();
        assert!(e.contains("32 bytes") && e.contains("found 2 bytes"), "{e}");
    }
}
