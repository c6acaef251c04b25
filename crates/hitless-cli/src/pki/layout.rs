//! How an issued identity lands on disk: the layouts and write patterns of real agents, so
//! `hitless agent` (and the demo) exercise what a reloading service meets in production.
//!
//! ```text
//! layout   files under the output directory                             written like
//! bundle   identity.pem: leaf, issuing CA, key                          OpenBao/Vault Agent
//! pair     tls.crt (leaf + intermediate), tls.key                       most agents, cron jobs
//! k8s      tls.crt, tls.key, ca.crt -> ..data/NAME -> ..TIMESTAMP/NAME  the kubelet (Secret)
//! certbot  live/NAME/{cert,chain,fullchain,privkey}.pem                 certbot
//!          -> ../../archive/NAME/{cert,chain,fullchain,privkey}N.pem
//! ```
//!
//! Write modes for `bundle` and `pair`: [`WriteMode::Rename`] (temp file in the same directory,
//! fsync, `rename(2)`: readers see the old or the new file, never a partial one) and
//! [`WriteMode::InPlace`] (truncate and rewrite the existing file, certificate then key with a
//! pause between, as a naive agent does: readers can see an empty or half-new file, and a new
//! certificate with the old key). `k8s` and `certbot` always swap symlinks.
//!
//! Private keys are created with mode 0600 (the mode is given at `open(2)`, never fixed up after
//! the bytes are written); certificates with 0644.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};

use super::Issued;

/// Mode of certificate files.
pub const CERT_MODE: u32 = 0o644;
/// Mode of private-key files (and of bundles holding a key).
pub const KEY_MODE: u32 = 0o600;

/// Bundle layout file name.
pub const BUNDLE_FILE: &str = "identity.pem";
/// Certificate chain file of the `pair` and `k8s` layouts.
pub const TLS_CRT_FILE: &str = "tls.crt";
/// Key file of the `pair` and `k8s` layouts.
pub const TLS_KEY_FILE: &str = "tls.key";
/// Trust bundle (the root) of the `k8s` layout.
pub const K8S_CA_FILE: &str = "ca.crt";
/// The kubelet's symlink to the current timestamped directory.
pub const K8S_DATA_LINK: &str = "..data";

/// Which files an identity is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// `identity.pem`: leaf, issuing CA and key in one file (an OpenBao/Vault Agent template).
    Bundle,
    /// `tls.crt` (leaf + intermediate) and `tls.key`.
    Pair,
    /// A Kubernetes Secret volume: `tls.crt`, `tls.key`, `ca.crt` symlinked through `..data`
    /// to a timestamped directory that each rotation replaces.
    K8s,
    /// certbot: `live/NAME/*.pem` symlinks into `archive/NAME/*N.pem`, N counting renewals.
    Certbot,
}

/// How files are replaced (for the `bundle` and `pair` layouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteMode {
    /// Temp file in the same directory, fsync, rename over the old one.
    Rename,
    /// Truncate and rewrite the existing file, certificate then key with a pause between.
    InPlace,
}

/// Where and how identities are written.
#[derive(Debug, Clone)]
pub struct Output {
    /// The output directory (created if missing).
    pub dir: PathBuf,
    /// The certbot lineage name (`live/NAME`); unused by the other layouts.
    pub name: String,
    /// Which files.
    pub layout: Layout,
    /// How they are replaced.
    pub write: WriteMode,
    /// With [`WriteMode::InPlace`]: the pause between writing the certificate and the key.
    pub in_place_pause: Duration,
}

impl Output {
    /// Refuses combinations that make no sense before anything is issued.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.write == WriteMode::InPlace && matches!(self.layout, Layout::K8s | Layout::Certbot)
        {
            bail!(
                "--write in-place applies to the bundle and pair layouts; the k8s and certbot \
                 layouts always swap symlinks"
            );
        }
        if self.layout == Layout::Certbot {
            check_file_name(&self.name).context("not usable as a certbot lineage name")?;
        }
        Ok(())
    }

    /// Writes `issued` and returns the paths a consumer reads (symlinks for `k8s`/`certbot`).
    pub fn write(&self, issued: &Issued) -> anyhow::Result<Vec<PathBuf>> {
        self.check()?;
        fs::create_dir_all(&self.dir).with_context(|| {
            format!("cannot create the output directory {}", self.dir.display())
        })?;
        match self.layout {
            Layout::Bundle => self.write_bundle(issued),
            Layout::Pair => self.write_pair(issued),
            Layout::K8s => write_k8s(&self.dir, issued),
            Layout::Certbot => write_certbot(&self.dir, &self.name, issued),
        }
    }

    fn write_bundle(&self, issued: &Issued) -> anyhow::Result<Vec<PathBuf>> {
        let path = self.dir.join(BUNDLE_FILE);
        match self.write {
            WriteMode::Rename => write_atomic(&path, issued.bundle_pem().as_bytes(), KEY_MODE)?,
            WriteMode::InPlace => {
                let mut file = open_in_place(&path, KEY_MODE)?;
                write_all(&mut file, &path, issued.fullchain_pem().as_bytes())?;
                std::thread::sleep(self.in_place_pause);
                write_all(&mut file, &path, issued.key_pem.as_bytes())?;
            }
        }
        Ok(vec![path])
    }

    fn write_pair(&self, issued: &Issued) -> anyhow::Result<Vec<PathBuf>> {
        let crt = self.dir.join(TLS_CRT_FILE);
        let key = self.dir.join(TLS_KEY_FILE);
        match self.write {
            WriteMode::Rename => {
                write_atomic(&crt, issued.fullchain_pem().as_bytes(), CERT_MODE)?;
                write_atomic(&key, issued.key_pem.as_bytes(), KEY_MODE)?;
            }
            WriteMode::InPlace => {
                let mut file = open_in_place(&crt, CERT_MODE)?;
                write_all(&mut file, &crt, issued.fullchain_pem().as_bytes())?;
                drop(file);
                std::thread::sleep(self.in_place_pause);
                let mut file = open_in_place(&key, KEY_MODE)?;
                write_all(&mut file, &key, issued.key_pem.as_bytes())?;
            }
        }
        Ok(vec![crt, key])
    }
}

/// Replaces `path` atomically: writes `contents` to a new temp file (created with `mode`) in the
/// same directory, fsyncs it, renames it over `path`, then fsyncs the directory (best effort).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = temp_sibling(path)?;
    let result = (|| {
        let mut file = create_new(&tmp, mode)?;
        write_all(&mut file, &tmp, contents)?;
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_parent(path);
    Ok(())
}

/// Points `link` at `target` atomically: a new symlink under a temp name renamed over `link`.
fn replace_symlink(target: &Path, link: &Path) -> anyhow::Result<()> {
    let tmp = temp_sibling(link)?;
    symlink(target, &tmp)
        .with_context(|| format!("cannot create the symlink {}", tmp.display()))?;
    fs::rename(&tmp, link).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!(
            "cannot rename {} to {}",
            tmp.display(),
            link.display()
        ))
    })
}

/// The kubelet's `AtomicWriter`, in its order: write the files into a new timestamped directory,
/// point a new `..data_tmp` at it, rename `..data_tmp` over `..data` (the switch), make sure each
/// visible name is a symlink through `..data`, remove the previous timestamped directory.
fn write_k8s(dir: &Path, issued: &Issued) -> anyhow::Result<Vec<PathBuf>> {
    let files: [(&str, String, u32); 3] = [
        (TLS_CRT_FILE, issued.fullchain_pem(), CERT_MODE),
        (TLS_KEY_FILE, issued.key_pem.clone(), KEY_MODE),
        (K8S_CA_FILE, issued.ca_pem.clone(), CERT_MODE),
    ];
    let data = dir.join(K8S_DATA_LINK);
    let old = match fs::read_link(&data) {
        Ok(target) => Some(target),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e)
                .with_context(|| format!("{} exists but is not a symlink", data.display()))
        }
    };

    let ts_name = create_timestamp_dir(dir)?;
    let ts_dir = dir.join(&ts_name);
    for (name, contents, mode) in &files {
        let path = ts_dir.join(name);
        let mut file = create_new(&path, *mode)?;
        write_all(&mut file, &path, contents.as_bytes())?;
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", path.display()))?;
    }
    sync_dir(&ts_dir);

    let data_tmp = dir.join("..data_tmp");
    match fs::remove_file(&data_tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", data_tmp.display())),
    }
    symlink(&ts_name, &data_tmp)
        .with_context(|| format!("cannot create the symlink {}", data_tmp.display()))?;
    fs::rename(&data_tmp, &data)
        .with_context(|| format!("cannot rename {} to {}", data_tmp.display(), data.display()))?;
    sync_dir(dir);

    let mut paths = Vec::with_capacity(files.len());
    for (name, _, _) in &files {
        let link = dir.join(name);
        let target = Path::new(K8S_DATA_LINK).join(name);
        if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            replace_symlink(&target, &link)?;
        }
        paths.push(link);
    }

    if let Some(old) = old {
        // Only ever a sibling timestamped directory: never follow `..data` anywhere else.
        let is_ts_dir = old.components().count() == 1
            && old
                .to_str()
                .is_some_and(|s| s.starts_with("..") && s != "..")
            && old.as_os_str() != ts_name.as_str();
        if is_ts_dir {
            let old_dir = dir.join(&old);
            match fs::remove_dir_all(&old_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", old_dir.display()))
                }
            }
        }
    }
    Ok(paths)
}

/// Creates `dir/..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN` (UTC) and returns its name.
fn create_timestamp_dir(dir: &Path) -> anyhow::Result<String> {
    for _ in 0..100 {
        let t = time::OffsetDateTime::now_utc();
        let name = format!(
            "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}.{:09}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond()
        );
        match fs::create_dir(dir.join(&name)) {
            Ok(()) => return Ok(name),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                std::thread::sleep(Duration::from_micros(1))
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot create {}", dir.join(&name).display()))
            }
        }
    }
    bail!(
        "cannot find a free timestamped directory name in {}",
        dir.display()
    )
}

/// certbot's renewal: new `archive/NAME/{cert,chain,fullchain,privkey}N.pem` (N one more than
/// the highest there), then each `live/NAME/*.pem` symlink repointed, in certbot's order (cert,
/// privkey, chain, fullchain). certbot itself unlinks and re-creates each link; here each is
/// replaced atomically, but the four links still change one after another.
fn write_certbot(dir: &Path, name: &str, issued: &Issued) -> anyhow::Result<Vec<PathBuf>> {
    let archive = dir.join("archive").join(name);
    let live = dir.join("live").join(name);
    for d in [&archive, &live] {
        fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let mut highest = 0u64;
    let entries =
        fs::read_dir(&archive).with_context(|| format!("cannot list {}", archive.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", archive.display()))?;
        let file_name = entry.file_name();
        let n = file_name
            .to_str()
            .and_then(|n| n.strip_prefix("fullchain"))
            .and_then(|n| n.strip_suffix(".pem"))
            .and_then(|n| n.parse::<u64>().ok());
        highest = highest.max(n.unwrap_or(0));
    }
    let n = highest + 1;
    let kinds: [(&str, String, u32); 4] = [
        ("cert", issued.cert_pem.clone(), CERT_MODE),
        ("privkey", issued.key_pem.clone(), KEY_MODE),
        ("chain", issued.chain_pem.clone(), CERT_MODE),
        ("fullchain", issued.fullchain_pem(), CERT_MODE),
    ];
    for (kind, contents, mode) in &kinds {
        let path = archive.join(format!("{kind}{n}.pem"));
        let mut file = create_new(&path, *mode)?;
        write_all(&mut file, &path, contents.as_bytes())?;
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", path.display()))?;
    }
    sync_dir(&archive);
    let relative = Path::new("../../archive").join(name);
    for (kind, _, _) in &kinds {
        replace_symlink(
            &relative.join(format!("{kind}{n}.pem")),
            &live.join(format!("{kind}.pem")),
        )?;
    }
    sync_dir(&live);
    Ok(vec![live.join("fullchain.pem"), live.join("privkey.pem")])
}

/// Opens `path` for an in-place rewrite: truncated, created with `mode` if missing (an existing
/// file keeps its mode and inode).
fn open_in_place(path: &Path, mode: u32) -> anyhow::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot open {} for rewriting", path.display()))
}

fn create_new(path: &Path, mode: u32) -> anyhow::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

fn write_all(file: &mut File, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A temp name next to `path`, unique in this process: `.NAME.tmp.PID.N`.
fn temp_sibling(path: &Path) -> anyhow::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id())))
}

/// fsyncs the directory holding `path`, so a rename survives a crash (best effort: some file
/// systems refuse to fsync a directory, and readers never depend on it).
fn sync_parent(path: &Path) {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Checks that `name` is a single, ordinary path component (a file name of its own).
pub fn check_file_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        bail!("{name:?} is not a plain file name");
    }
    Ok(())
}
