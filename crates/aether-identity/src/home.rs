//! The operator's configuration directory (`ALKAHEST_HOME`).
//!
//! Layout:
//!
//! ```text
//! root.key        lattice root secret key (0600); signs admin requests
//! root.pub        its public key
//! publisher.key   publisher secret key (0600); signs essences
//! publisher.pub   its public key
//! node            admin address of the node `alkahest up` last started
//! ```

use std::path::{Path, PathBuf};

use crate::{KeyError, LatticeId, PublicKey, SecretKey};

/// Environment variable overriding the directory.
pub const HOME_ENV: &str = "ALKAHEST_HOME";

/// The operator's configuration directory.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

/// Keys created or found by [`Home::init`].
#[derive(Debug, Clone)]
pub struct InitOutcome {
    /// Whether new keys were written (false: they already existed).
    pub created: bool,
    /// The lattice root public key.
    pub root: PublicKey,
    /// The publisher public key.
    pub publisher: PublicKey,
}

impl Home {
    /// `$ALKAHEST_HOME`, else the platform config directory + `alkahest`,
    /// else `./.alkahest`.
    pub fn locate() -> Self {
        let dir = std::env::var_os(HOME_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CONFIG_HOME")
                    .filter(|v| !v.is_empty())
                    .map(|d| PathBuf::from(d).join("alkahest"))
            })
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".config").join("alkahest"))
            })
            .unwrap_or_else(|| PathBuf::from(".alkahest"));
        Self { dir }
    }

    /// A home at an explicit path.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the root secret key.
    pub fn root_key_path(&self) -> PathBuf {
        self.dir.join("root.key")
    }

    /// Path of the publisher secret key.
    pub fn publisher_key_path(&self) -> PathBuf {
        self.dir.join("publisher.key")
    }

    /// Path of the file naming the node `alkahest up` started.
    pub fn node_file(&self) -> PathBuf {
        self.dir.join("node")
    }

    /// Whether `lattice init` has run here.
    pub fn is_initialised(&self) -> bool {
        self.root_key_path().exists() && self.publisher_key_path().exists()
    }

    /// Creates the root and publisher keys unless they exist (idempotent).
    pub fn init(&self) -> Result<InitOutcome, KeyError> {
        let mut created = false;
        for (path, pub_path) in [
            (self.root_key_path(), self.dir.join("root.pub")),
            (self.publisher_key_path(), self.dir.join("publisher.pub")),
        ] {
            if !path.exists() {
                let key = SecretKey::generate();
                key.write_new(&path)?;
                std::fs::write(&pub_path, format!("{}\n", key.public())).map_err(|source| {
                    KeyError::Io {
                        action: "writing",
                        path: pub_path.clone(),
                        source,
                    }
                })?;
                created = true;
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        }
        Ok(InitOutcome {
            created,
            root: self.root_key()?.public(),
            publisher: self.publisher_key()?.public(),
        })
    }

    /// The root secret key.
    pub fn root_key(&self) -> Result<SecretKey, KeyError> {
        SecretKey::read(&self.root_key_path())
    }

    /// The lattice root public key: `root.pub`, or the public half of
    /// `root.key` when `root.pub` is missing.
    pub fn root_public(&self) -> Result<PublicKey, KeyError> {
        let pub_path = self.dir.join("root.pub");
        if pub_path.exists() {
            PublicKey::read(&pub_path)
        } else {
            Ok(self.root_key()?.public())
        }
    }

    /// The id of the lattice this home administers (the hash of its root
    /// public key).
    pub fn lattice_id(&self) -> Result<LatticeId, KeyError> {
        Ok(LatticeId::of_root(&self.root_public()?))
    }

    /// The publisher secret key.
    pub fn publisher_key(&self) -> Result<SecretKey, KeyError> {
        SecretKey::read(&self.publisher_key_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lattice_id_from_home() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::at(dir.path().join("home"));
        assert!(home.lattice_id().is_err());
        let outcome = home.init().expect("init");
        assert_eq!(
            home.lattice_id().expect("lattice id"),
            LatticeId::of_root(&outcome.root)
        );
        std::fs::remove_file(home.dir().join("root.pub")).expect("rm root.pub");
        assert_eq!(home.root_public().expect("from root.key"), outcome.root);
    }
}
