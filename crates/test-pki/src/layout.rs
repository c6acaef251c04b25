//! On-disk rotation layouts used by real deployments: atomic replace,
//! Kubernetes Secret volumes (`..data` symlink swap) and certbot's
//! `live/` -> `archive/` symlinks.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counter making temp names unique across threads.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temp-file name in the same directory as `path`, unique within this process.
fn temp_sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .expect("path has no file name")
        .to_string_lossy();
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{tag}.{}.{n}", std::process::id()))
}

/// Atomic replace: write `contents` to a temp file in the same directory as
/// `path`, fsync it, then `rename(2)` it over `path`.
///
/// Readers see either the old or the new file, never a partial one; `path`
/// gets a new inode (as with most editors and config-management tools).
/// The parent directory must exist.
pub fn write_atomic(path: &Path, contents: &[u8]) {
    let tmp = temp_sibling(path, "tmp");
    {
        let mut f = fs::File::create(&tmp)
            .unwrap_or_else(|e| panic!("create temp file {}: {e}", tmp.display()));
        f.write_all(contents).expect("write temp file");
        f.sync_all().expect("fsync temp file");
    }
    fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), path.display()));
}

/// Replace (or create) the symlink `link` so it points at `target`, atomically:
/// the new symlink is created under a temp name and renamed over `link`.
fn replace_symlink(target: &Path, link: &Path) {
    let tmp = temp_sibling(link, "lnk");
    symlink(target, &tmp).unwrap_or_else(|e| panic!("symlink {}: {e}", tmp.display()));
    fs::rename(&tmp, link)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), link.display()));
}

/// Name of the kubelet's timestamped data directory for "now", e.g.
/// `..2026_11_23_15_00_00.123456789`.
fn k8s_timestamp_name() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}.{:09}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

/// Emulate the kubelet's `AtomicWriter` updating a Secret/ConfigMap volume in `dir`.
///
/// Steps, in the kubelet's order:
/// 1. create a new timestamped directory `dir/..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN`
///    and write every `(name, contents)` file into it;
/// 2. create the symlink `dir/..data_tmp -> <that dir name>` (relative);
/// 3. `rename(dir/..data_tmp, dir/..data)` — the atomic switch;
/// 4. make sure each user-visible `dir/NAME -> ..data/NAME` symlink exists
///    (and remove those for names that are no longer present);
/// 5. remove the previous timestamped directory.
///
/// `dir` is created if missing. Call it repeatedly to simulate rotations.
/// File names must be plain names (no `/`), as in a Secret's keys.
pub fn k8s_swap(dir: &Path, files: &[(&str, &[u8])]) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    for (name, _) in files {
        assert!(
            !name.is_empty() && !name.contains('/') && !name.starts_with(".."),
            "invalid k8s volume file name {name:?}"
        );
    }

    let data = dir.join("..data");
    let old_ts: Option<PathBuf> = fs::read_link(&data).ok();

    // 1. New timestamped dir (unique even if two swaps land on the same nanosecond).
    let mut ts_name = k8s_timestamp_name();
    while dir.join(&ts_name).exists() || old_ts.as_deref() == Some(Path::new(&ts_name)) {
        std::thread::sleep(std::time::Duration::from_micros(1));
        ts_name = k8s_timestamp_name();
    }
    let ts_dir = dir.join(&ts_name);
    fs::create_dir(&ts_dir).unwrap_or_else(|e| panic!("create {}: {e}", ts_dir.display()));
    for (name, contents) in files {
        fs::write(ts_dir.join(name), contents)
            .unwrap_or_else(|e| panic!("write {}/{name}: {e}", ts_dir.display()));
    }

    // 2. ..data_tmp -> ts dir (remove a stale one left by a crashed run).
    let data_tmp = dir.join("..data_tmp");
    match fs::remove_file(&data_tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", data_tmp.display()),
    }
    symlink(&ts_name, &data_tmp).unwrap_or_else(|e| panic!("symlink ..data_tmp: {e}"));

    // 3. Atomic switch.
    fs::rename(&data_tmp, &data).unwrap_or_else(|e| panic!("rename ..data_tmp -> ..data: {e}"));

    // 4. User-visible per-file symlinks.
    for (name, _) in files {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link)
                .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
        }
    }
    if let Some(old) = &old_ts {
        if let Ok(entries) = fs::read_dir(dir.join(old)) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let still_present = files.iter().any(|(n, _)| name.to_str() == Some(*n));
                let link = dir.join(&name);
                let is_link = fs::symlink_metadata(&link)
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false);
                if !still_present && is_link {
                    let _ = fs::remove_file(&link);
                }
            }
        }
    }

    // 5. Remove the previous timestamped dir.
    if let Some(old) = old_ts {
        let old_dir = dir.join(old);
        if old_dir != ts_dir {
            match fs::remove_dir_all(&old_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => panic!("remove {}: {e}", old_dir.display()),
            }
        }
    }
}

/// Emulate `certbot renew` for lineage `name` under `root` (certbot's config dir).
///
/// Writes `root/archive/NAME/fullchainN.pem` and `privkeyN.pem`, where `N` is
/// one more than the highest existing `fullchainN.pem` (1 on first call), then
/// atomically repoints the relative symlinks
/// `root/live/NAME/fullchain.pem -> ../../archive/NAME/fullchainN.pem` and
/// `root/live/NAME/privkey.pem -> ../../archive/NAME/privkeyN.pem`
/// (fullchain first, then privkey, as certbot does; each is a new symlink
/// under a temp name renamed over the old one).
///
/// Returns `(live fullchain path, live privkey path)`.
pub fn certbot_renew(
    root: &Path,
    name: &str,
    fullchain: &[u8],
    privkey: &[u8],
) -> (PathBuf, PathBuf) {
    assert!(
        !name.is_empty() && !name.contains('/'),
        "invalid lineage name {name:?}"
    );
    let archive = root.join("archive").join(name);
    let live = root.join("live").join(name);
    fs::create_dir_all(&archive).unwrap_or_else(|e| panic!("create {}: {e}", archive.display()));
    fs::create_dir_all(&live).unwrap_or_else(|e| panic!("create {}: {e}", live.display()));

    let highest = fs::read_dir(&archive)
        .expect("read archive dir")
        .flatten()
        .filter_map(|e| {
            let n = e.file_name();
            let n = n.to_str()?;
            n.strip_prefix("fullchain")?
                .strip_suffix(".pem")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    let n = highest + 1;

    let fullchain_name = format!("fullchain{n}.pem");
    let privkey_name = format!("privkey{n}.pem");
    fs::write(archive.join(&fullchain_name), fullchain).expect("write archive fullchain");
    fs::write(archive.join(&privkey_name), privkey).expect("write archive privkey");

    let rel = Path::new("../../archive").join(name);
    let live_fullchain = live.join("fullchain.pem");
    let live_privkey = live.join("privkey.pem");
    replace_symlink(&rel.join(&fullchain_name), &live_fullchain);
    replace_symlink(&rel.join(&privkey_name), &live_privkey);
    (live_fullchain, live_privkey)
}
