//! Who may talk to a branch: the bank's cluster secret and the challenge-response proofs built
//! from it.
//!
//! The controller makes a fresh random secret for each bank (or reads one from `--secret-file`)
//! and hands it to every branch in `InitBranch`. After that, every peer connection and every
//! attaching controller proves knowledge of the secret without sending it: each side sends a
//! random nonce, and the other answers with an HMAC-SHA256 over that nonce, both names and the
//! role it plays, so a proof cannot be replayed on another connection, in another direction, or
//! for another pair of branches.
//!
//! Peer handshake (the dialling branch `d`, the accepting branch `a`):
//!
//! ```text
//! d -> a  Hello   { name: d, nonce: Nd }
//! a -> d  Welcome { nonce: Na, proof: HMAC(secret, "accept",  Nd, a, d) }
//! d -> a  Auth    { proof: HMAC(secret, "dial", Na, d, a) }
//! ```
//!
//! Controller handshake (only for a controller attaching to a running bank; the first
//! controller is trusted on first use, by the secret it hands out in `InitBranch`):
//!
//! ```text
//! c -> b  ControllerHello { nonce: Nc, controller: id, take_over }
//! b -> c  Welcome { nonce: Nb, proof: HMAC(secret, "branch", Nc, b, next_snapshot_id), next_snapshot_id }
//! c -> b  Auth    { proof: HMAC(secret, "controller", Nb, b, claim) }
//! b -> c  ControllerLease { GRANTED, next_snapshot_id } or { HELD, holder, expires_in_ms }
//! ```
//!
//! `claim` is empty for an anonymous controller (id 0) without take-over, else
//! `controller <id in hex>` followed by ` take-over` when it asks to end the current holder's
//! lease (see [`crate::handshake::ControllerClaim`]), so neither can be changed on the way.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;

/// Bytes in a nonce.
pub const NONCE_BYTES: usize = 16;

/// Bytes in a generated secret; a secret file must hold at least [`MIN_SECRET_BYTES`].
pub const SECRET_BYTES: usize = 32;

/// The shortest secret accepted from a file or from `InitBranch`.
pub const MIN_SECRET_BYTES: usize = 16;

/// The largest secret file read (`--secret-file`), in bytes: a secret is a few dozen bytes, and
/// a bound keeps a mistaken path (a log, `/dev/zero`) from being read until memory runs out.
pub const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// What a proof vouches for, so that a proof made for one step cannot stand in for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The accepting branch answering a dialler's nonce.
    Accept,
    /// The dialling branch answering the acceptor's nonce.
    Dial,
    /// A branch answering an attaching controller's nonce.
    Branch,
    /// An attaching controller answering a branch's nonce.
    Controller,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Accept => b"snapbank/1/accept",
            Role::Dial => b"snapbank/1/dial",
            Role::Branch => b"snapbank/1/branch",
            Role::Controller => b"snapbank/1/controller",
        }
    }
}

/// The bank's cluster secret. Its `Debug` form never shows the bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Why a secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("{file}: cannot read the secret: {reason}")]
    Unreadable { file: String, reason: String },
    #[error(
        "{file}: not a regular file ({kind}); the secret must be a file of at most {MAX_SECRET_FILE_BYTES} bytes"
    )]
    NotAFile { file: String, kind: &'static str },
    #[error(
        "{file}: more than the {MAX_SECRET_FILE_BYTES} bytes a secret file may hold (is this the right file?)"
    )]
    TooLarge {
        file: String,
        /// The size seen: the file's length, or what was read before the bound.
        len: u64,
    },
    #[error("{origin}: the secret is {len} bytes; at least {MIN_SECRET_BYTES} are needed")]
    TooShort { origin: String, len: usize },
}

impl Secret {
    /// The empty key of a bank whose controller sent no secret (it speaks only the original
    /// schema): handshakes still run, but prove nothing.
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// A fresh random secret.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; SECRET_BYTES];
        rand::rng().fill(&mut bytes[..]);
        Self(bytes)
    }

    /// A secret from raw bytes (as carried by `InitBranch`); `origin` names them in errors.
    pub fn from_bytes(bytes: Vec<u8>, origin: &str) -> Result<Self, SecretError> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort {
                origin: origin.to_string(),
                len: bytes.len(),
            });
        }
        Ok(Self(bytes))
    }

    /// Reads a secret file (`--secret-file` of both programs): its bytes, without trailing
    /// whitespace (so `echo ... > file` works). Only a regular file of at most
    /// [`MAX_SECRET_FILE_BYTES`] is read: a FIFO would hang the program at startup and a device
    /// like `/dev/zero` would be read until memory runs out. The file is opened without
    /// blocking, checked again once open (it may have been replaced), and read with a bound, so
    /// one that grows meanwhile is caught too.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt as _;

        let file = path.display().to_string();
        let unreadable = |err: std::io::Error| SecretError::Unreadable {
            file: file.clone(),
            reason: err.to_string(),
        };
        let check = |metadata: std::fs::Metadata| {
            if !metadata.is_file() {
                return Err(SecretError::NotAFile {
                    file: file.clone(),
                    kind: file_kind(&metadata.file_type()),
                });
            }
            if metadata.len() > MAX_SECRET_FILE_BYTES {
                return Err(SecretError::TooLarge {
                    file: file.clone(),
                    len: metadata.len(),
                });
            }
            Ok(())
        };
        check(std::fs::metadata(path).map_err(unreadable)?)?;
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(unreadable)?;
        check(opened.metadata().map_err(unreadable)?)?;
        let mut bytes = Vec::new();
        opened
            .take(MAX_SECRET_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
            return Err(SecretError::TooLarge {
                file,
                len: bytes.len() as u64,
            });
        }
        while bytes.last().is_some_and(u8::is_ascii_whitespace) {
            bytes.pop();
        }
        Self::from_bytes(bytes, &file)
    }

    /// Whether this is the empty key of a bank without a secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `bytes` are this secret, compared in constant time.
    pub fn same_as(&self, bytes: &[u8]) -> bool {
        self.0.len() == bytes.len()
            && self
                .0
                .iter()
                .zip(bytes)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }

    /// The raw bytes, for `InitBranch`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The proof that whoever holds this secret answers `nonce` in `role`, between `me` and
    /// `other`.
    pub fn prove(&self, role: Role, nonce: &[u8], me: &str, other: &str) -> Vec<u8> {
        self.mac(role, nonce, me, other)
            .map(|mac| mac.finalize().into_bytes().to_vec())
            .unwrap_or_default()
    }

    /// Checks `proof` in constant time.
    pub fn verify(&self, proof: &[u8], role: Role, nonce: &[u8], me: &str, other: &str) -> bool {
        self.mac(role, nonce, me, other)
            .is_some_and(|mac| mac.verify_slice(proof).is_ok())
    }

    /// The keyed MAC over the length-prefixed fields (so no two different inputs hash the same
    /// bytes). HMAC takes keys of any length, so `None` cannot happen in practice; it makes
    /// [`Self::prove`] empty and [`Self::verify`] false rather than panic.
    fn mac(&self, role: Role, nonce: &[u8], me: &str, other: &str) -> Option<Hmac<Sha256>> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).ok()?;
        for field in [role.label(), nonce, me.as_bytes(), other.as_bytes()] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        Some(mac)
    }
}

/// What kind of file a path that is not a regular file names, for the error.
fn file_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// A fresh random nonce.
pub fn nonce() -> Vec<u8> {
    let mut bytes = vec![0u8; NONCE_BYTES];
    rand::rng().fill(&mut bytes[..]);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secret() -> Secret {
        Secret::from_bytes(b"0123456789abcdef0123".to_vec(), "test").unwrap()
    }

    #[test]
    fn a_proof_verifies_only_for_its_own_role_nonce_and_names() {
        let secret = secret();
        let nonce = nonce();
        let proof = secret.prove(Role::Dial, &nonce, "b1", "b2");
        assert!(secret.verify(&proof, Role::Dial, &nonce, "b1", "b2"));
        assert!(!secret.verify(&proof, Role::Accept, &nonce, "b1", "b2"));
        assert!(!secret.verify(&proof, Role::Dial, &super::nonce(), "b1", "b2"));
        assert!(!secret.verify(&proof, Role::Dial, &nonce, "b2", "b1"));
        assert!(!secret.verify(&proof, Role::Dial, &nonce, "b1", "b3"));
        let other = Secret::from_bytes(b"another secret, 16+".to_vec(), "t").unwrap();
        assert!(!other.verify(&proof, Role::Dial, &nonce, "b1", "b2"));
        // Field boundaries matter: ("b1", "b2") and ("b1b", "2") are different.
        assert!(!secret.verify(&proof, Role::Dial, &nonce, "b1b", "2"));
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert!(matches!(
            Secret::from_bytes(vec![1; 5], "InitBranch"),
            Err(SecretError::TooShort { len: 5, .. })
        ));
        let secret = Secret::generate();
        assert_eq!(secret.as_bytes().len(), SECRET_BYTES);
        assert_ne!(secret, Secret::generate());
        assert_eq!(format!("{secret:?}"), "Secret(32 bytes)");
        let dir = std::env::temp_dir().join(format!("snapbank-secret-{}", std::process::id()));
        std::fs::write(&dir, "correct horse battery staple\n").unwrap();
        assert_eq!(
            Secret::load(&dir).unwrap().as_bytes(),
            b"correct horse battery staple"
        );
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(
            Secret::load(&dir),
            Err(SecretError::Unreadable { .. })
        ));
    }

    #[test]
    fn only_a_bounded_regular_file_is_read_as_a_secret() {
        let dir =
            std::env::temp_dir().join(format!("snapbank-secret-kinds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let limit = MAX_SECRET_FILE_BYTES as usize;
        let largest = dir.join("largest");
        std::fs::write(&largest, vec![b'x'; limit]).unwrap();
        assert_eq!(Secret::load(&largest).unwrap().as_bytes().len(), limit);
        let larger = dir.join("larger");
        std::fs::write(&larger, vec![b'x'; limit + 1]).unwrap();
        assert!(matches!(
            Secret::load(&larger),
            Err(SecretError::TooLarge { len, .. }) if len == limit as u64 + 1
        ));
        assert!(matches!(
            Secret::load(&dir),
            Err(SecretError::NotAFile {
                kind: "a directory",
                ..
            })
        ));
        assert!(matches!(
            Secret::load(Path::new("/dev/zero")),
            Err(SecretError::NotAFile {
                kind: "a character device",
                ..
            })
        ));
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = Secret::load(&fifo).unwrap_err();
        assert!(
            matches!(err, SecretError::NotAFile { kind: "a FIFO", .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "{}: not a regular file (a FIFO); the secret must be a file of at most 4096 bytes",
                fifo.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        #[test]
        fn arbitrary_proofs_and_nonces_never_panic_or_verify(
            proof in proptest::collection::vec(any::<u8>(), 0..80),
            nonce in proptest::collection::vec(any::<u8>(), 0..40),
            me in ".{0,12}",
            other in ".{0,12}",
        ) {
            prop_assert!(!secret().verify(&proof, Role::Accept, &nonce, &me, &other));
        }
    }
}
