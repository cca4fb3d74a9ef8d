//! Where the database is and which master key wraps subject keys, from flags,
//! environment and defaults.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use onepd_adapters::MasterKey;

/// Flags every command that opens the log shares.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The database: `sqlite://PATH` or `postgres://user@host:port/db`.
    /// Default: the SQLite file `onepd.db` in the data directory.
    #[arg(long, env = "ONEPD_DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Where onepd keeps its embedded database and its generated master key.
    #[arg(long, env = "ONEPD_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// The master key file (64 hex characters). Default: `master.key` in the
    /// data directory. `ONEPD_MASTER_KEY` (the hex itself) takes precedence.
    #[arg(long, global = true)]
    pub master_key_file: Option<PathBuf>,
}

impl StoreArgs {
    /// The database url to open.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("onepd.db").display()))
    }

    fn key_file(&self) -> PathBuf {
        self.master_key_file.clone().unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    /// The master key: `ONEPD_MASTER_KEY`, else the key file; when neither
    /// exists and `create` is set, a new key written to the key file.
    pub fn master_key(&self, create: bool) -> anyhow::Result<Option<MasterKey>> {
        if let Ok(hex) = std::env::var("ONEPD_MASTER_KEY")
            && !hex.trim().is_empty()
        {
            return Ok(Some(MasterKey::from_hex(&hex).context("ONEPD_MASTER_KEY")?));
        }
        let path = self.key_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(MasterKey::from_hex(&text).with_context(|| format!("reading {}", path.display()))?)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                let key = MasterKey::generate();
                write_secret(&path, &key.to_hex())
                    .with_context(|| format!("writing a new master key to {}", path.display()))?;
                tracing::info!(path = %path.display(), "generated a master key; back it up: sealed payloads cannot be read without it");
                Ok(Some(key))
            }
            Err(err) => bail!("reading {}: {err}", path.display()),
        }
    }
}

/// Writes a file only its owner can read.
fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        onepd_adapters::store::sqlite::private_dir(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}
