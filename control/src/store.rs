//! The node's persistent state: one sealed JSON file under the state directory.
//!
//! # Files
//!
//! | name                | what                                                              |
//! |---------------------|-------------------------------------------------------------------|
//! | `lock`              | `flock`ed for the [`Store`]'s life; holds the owner's pid         |
//! | `state.json`        | the current [`StateFile`], sealed                                 |
//! | `state.json.bak`    | the generation before it, sealed                                  |
//! | `state.json.tmp`    | the next generation while it is written; removed at open          |
//! | `state.json.bak.tmp`| a new name for the backup while it is renamed; removed at open    |
//! | `state.json.corrupt`| a damaged `state.json` set aside when the backup was loaded       |
//! | `state.json.bak.corrupt` | a damaged backup set aside by [`Store::open_or_rebuild`]     |
//!
//! # Seal
//!
//! A state file is the pretty-printed JSON of the [`StateFile`] followed by one line, itself a
//! JSON object: `{"crc32":"1a2b3c4d","len":1234}\n`: the CRC-32 and the byte length of
//! everything before that line. Truncation anywhere (the last line and its newline are
//! required), a flipped byte, or a file cut and padded all fail the seal. The file is a stream
//! of two JSON values, so `jq . state.json` still reads it.
//!
//! # Crash safety
//!
//! [`Store::save`] does, in order:
//!
//! 1. write the new file as `state.json.tmp` and fsync it;
//! 2. if `state.json` is valid: hard-link it as `state.json.bak.tmp` and rename that over
//!    `state.json.bak`;
//! 3. rename `state.json.tmp` over `state.json`;
//! 4. fsync the directory.
//!
//! Why at every instant `state.json` or `state.json.bak` names a complete, valid file:
//! no file is ever written in place, only fresh `.tmp` files whose data is fsynced before any
//! durable name points at them; `rename` replaces a name atomically, so each of `state.json`
//! and `state.json.bak` names either its old inode or its new one, never a partial file.
//! Step 2 only ever points `.bak` at the inode `state.json` names, which is valid (the store
//! knows: it loaded or wrote it), and leaves `state.json` untouched; step 3 swaps
//! `state.json` from one valid inode to another. This holds in whatever order a power loss
//! persists the renames, since every inode involved was complete before it got a name. The
//! `.tmp` names are never read: a crash before step 3 leaves the previous generation in
//! `state.json`, and the caller never saw that save succeed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sluice_dataplane::table::Prefix;

use crate::api::AttachmentKey;

/// The [`StateFile::version`] this build reads and writes.
pub const STATE_VERSION: u32 = 1;

/// Largest state file that is read; anything larger is damaged.
pub const MAX_STATE_BYTES: u64 = 256 << 20;

const LOCK: &str = "lock";
const STATE: &str = "state.json";
const BACKUP: &str = "state.json.bak";
const STATE_TMP: &str = "state.json.tmp";
const BACKUP_TMP: &str = "state.json.bak.tmp";
const CORRUPT: &str = "state.json.corrupt";
const BACKUP_CORRUPT: &str = "state.json.bak.corrupt";

/// One pod attachment as the node remembers it across restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRecord {
    pub key: AttachmentKey,
    /// Path of the pod's network namespace.
    pub netns: String,
    /// The interface inside the pod (the runtime's `CNI_IFNAME`).
    pub ifname: String,
    pub ip: Ipv4Addr,
    /// MAC address of the pod interface, `"02:00:c6:13:01:05"`.
    pub mac: String,
    /// Host-side name of the pod's TAP device.
    pub tap: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// When the attachment was made, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// Everything the node persists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// Format version, [`STATE_VERSION`].
    pub version: u32,
    /// Increases by one with every save; 0 for a state never saved.
    pub generation: u64,
    pub node_name: String,
    /// The node's pod CIDR when the state was saved.
    pub pod_cidr: String,
    pub endpoints: Vec<EndpointRecord>,
    /// Raw YAML/JSON documents applied through the API, replayed at start in this order.
    pub applied_objects: Vec<String>,
    /// The IPAM round-robin cursor ([`crate::ipam::Ipam::last_allocated`]), so that a restart
    /// does not hand out again an address released just before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_allocated: Option<Ipv4Addr>,
}

impl StateFile {
    /// The state of a node that has never saved one.
    pub fn new(node_name: &str, pod_cidr: Prefix) -> StateFile {
        StateFile {
            version: STATE_VERSION,
            generation: 0,
            node_name: node_name.to_owned(),
            pod_cidr: pod_cidr.to_string(),
            endpoints: Vec::new(),
            applied_objects: Vec::new(),
            last_allocated: None,
        }
    }
}

/// How [`Store::open`] found the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadOutcome {
    /// No state file existed: the node starts empty.
    Fresh,
    /// `state.json` was valid.
    Loaded,
    /// `state.json` was missing or damaged and the previous generation was loaded from
    /// `state.json.bak`; the last save may be lost. Log `reason` as a warning.
    RecoveredFromBackup { reason: String },
    /// Neither file could be loaded and [`Store::open_or_rebuild`] set them aside: the state
    /// is empty and the caller must rebuild it from what the kernel still shows before it
    /// hands out any address. Log `reason` as a warning.
    Rebuild { reason: String },
}

/// Why the state could not be opened, loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "state directory is locked through {}{}: expected one sluiced per state directory",
        .path.display(), holder_text(*.holder)
    )]
    Locked { path: PathBuf, holder: Option<u32> },
    #[error("state file {} is unusable: {reason}; {advice}", .path.display())]
    Corrupt {
        path: PathBuf,
        reason: String,
        advice: String,
    },
    #[error(
        "pod CIDR changed from {stored} (in the state file) to {configured} (configured): \
         addresses handed out from {stored} could collide; drain the node and remove its state \
         directory to change it"
    )]
    CidrChanged { stored: String, configured: String },
    #[error(
        "state file {} has format version {found}: expected {supported} (written by a newer sluiced?)",
        .path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("cannot encode the state: {0}")]
    Encode(#[source] serde_json::Error),
}

fn holder_text(holder: Option<u32>) -> String {
    holder.map_or(String::new(), |pid| format!(" (held by pid {pid})"))
}

/// The state directory of one node, locked for as long as this value lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Released when dropped, also when the process dies.
    _lock: Flock<File>,
    pod_cidr: String,
    generation: u64,
    /// Whether `state.json` is known to be valid, and so may become the backup.
    state_valid: bool,
    outcome: LoadOutcome,
}

impl Store {
    /// Opens the state directory `dir` (created with mode 0700 when missing), locks it and
    /// loads its state; see [`LoadOutcome`] for what was found. A fresh directory yields
    /// [`StateFile::new`]. The stored pod CIDR must be `pod_cidr`.
    pub fn open(
        dir: &Path,
        node_name: &str,
        pod_cidr: Prefix,
    ) -> Result<(Store, StateFile), StoreError> {
        Store::open_inner(dir, node_name, pod_cidr, false)
    }

    /// [`Store::open`], except where it would fail with [`StoreError::Corrupt`]: then the
    /// damaged files are set aside (`state.json.corrupt`, `state.json.bak.corrupt`) and an
    /// empty state comes back with [`LoadOutcome::Rebuild`]. `sluiced --recover`.
    pub fn open_or_rebuild(
        dir: &Path,
        node_name: &str,
        pod_cidr: Prefix,
    ) -> Result<(Store, StateFile), StoreError> {
        Store::open_inner(dir, node_name, pod_cidr, true)
    }

    fn open_inner(
        dir: &Path,
        node_name: &str,
        pod_cidr: Prefix,
        rebuild: bool,
    ) -> Result<(Store, StateFile), StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create directory", dir))?;
        let lock = lock_dir(dir)?;
        for leftover in [STATE_TMP, BACKUP_TMP] {
            remove_if_present(&dir.join(leftover))?;
        }

        let state_path = dir.join(STATE);
        let backup_path = dir.join(BACKUP);
        let (state, outcome, state_valid) = match read_sealed(&state_path)? {
            Sealed::Valid(state) => (state, LoadOutcome::Loaded, true),
            main => match (read_sealed(&backup_path)?, &main) {
                (Sealed::Missing, Sealed::Missing) => (
                    StateFile::new(node_name, pod_cidr),
                    LoadOutcome::Fresh,
                    false,
                ),
                (Sealed::Valid(state), _) => {
                    let mut reason = format!("{}: {}", state_path.display(), main.describe());
                    if let Sealed::Invalid(_) = main {
                        let aside = dir.join(CORRUPT);
                        // Keep the damaged file for inspection; the backup stays valid meanwhile.
                        fs::rename(&state_path, &aside)
                            .map_err(io_err("set aside damaged state file", &state_path))?;
                        reason.push_str(&format!(" (set aside as {})", aside.display()));
                    }
                    reason.push_str(&format!("; loaded generation {}", state.generation));
                    let outcome = LoadOutcome::RecoveredFromBackup { reason };
                    (state, outcome, false)
                }
                (backup, _) if rebuild => {
                    let mut reason = format!(
                        "{} {}, and {} {}",
                        state_path.display(),
                        main.describe(),
                        backup_path.display(),
                        backup.describe()
                    );
                    for (from, to) in [(&state_path, CORRUPT), (&backup_path, BACKUP_CORRUPT)] {
                        if from.exists() {
                            let aside = dir.join(to);
                            fs::rename(from, &aside)
                                .map_err(io_err("set aside damaged state file", from))?;
                            reason.push_str(&format!("; set aside as {}", aside.display()));
                        }
                    }
                    let state = StateFile::new(node_name, pod_cidr);
                    (state, LoadOutcome::Rebuild { reason }, false)
                }
                (backup, _) => {
                    return Err(StoreError::Corrupt {
                        reason: format!(
                            "it {}, and {} {}",
                            main.describe(),
                            backup_path.display(),
                            backup.describe()
                        ),
                        advice: "start sluiced once with --recover: it sets both files aside \
                                 and rebuilds the endpoints from the pod TAP devices still present"
                            .to_owned(),
                        path: state_path,
                    })
                }
            },
        };

        let configured = pod_cidr.to_string();
        if state.pod_cidr != configured {
            return Err(StoreError::CidrChanged {
                stored: state.pod_cidr,
                configured,
            });
        }
        let store = Store {
            dir: dir.to_owned(),
            _lock: lock,
            pod_cidr: configured,
            generation: state.generation,
            state_valid,
            outcome,
        };
        Ok((store, state))
    }

    /// Saves `state` crash-safely (see the [module documentation](self)) as the next
    /// generation, and returns that generation. `state.generation` and `state.version` are
    /// ignored; its pod CIDR must be the one the store was opened with.
    pub fn save(&mut self, state: &StateFile) -> Result<u64, StoreError> {
        self.save_until(state, None)
    }

    /// How [`Store::open`] found the state.
    pub fn outcome(&self) -> &LoadOutcome {
        &self.outcome
    }

    /// The generation last loaded or saved.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// [`Store::save`], stopping after `crash_after` to simulate a crash there.
    fn save_until(
        &mut self,
        state: &StateFile,
        crash_after: Option<SaveStep>,
    ) -> Result<u64, StoreError> {
        if state.pod_cidr != self.pod_cidr {
            return Err(StoreError::CidrChanged {
                stored: self.pod_cidr.clone(),
                configured: state.pod_cidr.clone(),
            });
        }
        let generation = self.generation + 1;
        let mut next = state.clone();
        next.version = STATE_VERSION;
        next.generation = generation;
        let bytes = seal(&next)?;

        let state_path = self.dir.join(STATE);
        let tmp = self.dir.join(STATE_TMP);
        write_synced(&tmp, &bytes)?;
        if crash_after == Some(SaveStep::TmpWritten) {
            return Ok(generation);
        }
        if self.state_valid {
            let backup_tmp = self.dir.join(BACKUP_TMP);
            remove_if_present(&backup_tmp)?;
            fs::hard_link(&state_path, &backup_tmp).map_err(io_err("link", &backup_tmp))?;
            if crash_after == Some(SaveStep::BackupLinked) {
                return Ok(generation);
            }
            fs::rename(&backup_tmp, self.dir.join(BACKUP))
                .map_err(io_err("rename to backup", &backup_tmp))?;
            if crash_after == Some(SaveStep::BackupRenamed) {
                return Ok(generation);
            }
        }
        fs::rename(&tmp, &state_path).map_err(io_err("rename into place", &tmp))?;
        if crash_after == Some(SaveStep::Renamed) {
            return Ok(generation);
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory", &self.dir))?;
        self.generation = generation;
        self.state_valid = true;
        Ok(generation)
    }
}

/// Points in [`Store::save`] where a test may stop it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SaveStep {
    TmpWritten,
    BackupLinked,
    BackupRenamed,
    Renamed,
}

/// What one state file holds.
enum Sealed {
    Missing,
    Valid(StateFile),
    Invalid(String),
}

impl Sealed {
    fn describe(&self) -> String {
        match self {
            Sealed::Missing => "is missing".to_owned(),
            Sealed::Valid(state) => format!("is valid (generation {})", state.generation),
            Sealed::Invalid(reason) => format!("is damaged ({reason})"),
        }
    }
}

/// The seal line that ends a state file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Seal {
    crc32: String,
    len: u64,
}

fn seal(state: &StateFile) -> Result<Vec<u8>, StoreError> {
    let mut bytes = serde_json::to_vec_pretty(state).map_err(StoreError::Encode)?;
    bytes.push(b'\n');
    let seal = Seal {
        crc32: format!("{:08x}", crc32fast::hash(&bytes)),
        len: bytes.len() as u64,
    };
    let line = serde_json::to_vec(&seal).map_err(StoreError::Encode)?;
    bytes.extend_from_slice(&line);
    bytes.push(b'\n');
    Ok(bytes)
}

/// Checks the seal of `bytes` and decodes the state; the error says what is wrong.
fn unseal(bytes: &[u8]) -> Result<StateFile, String> {
    let Some(content) = bytes.strip_suffix(b"\n") else {
        return Err(format!(
            "{} bytes without the final newline: truncated",
            bytes.len()
        ));
    };
    let split = content
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let (body, line) = content.split_at(split);
    let seal: Seal = serde_json::from_slice(line)
        .map_err(|err| format!("no seal line at the end ({err}): truncated or edited"))?;
    if seal.len != body.len() as u64 {
        return Err(format!(
            "seal says {} bytes, found {}: truncated or edited",
            seal.len,
            body.len()
        ));
    }
    let crc = format!("{:08x}", crc32fast::hash(body));
    if seal.crc32 != crc {
        return Err(format!(
            "checksum {crc} does not match the sealed {}: corrupted",
            seal.crc32
        ));
    }
    serde_json::from_slice(body).map_err(|err| format!("sealed content does not decode: {err}"))
}

fn read_sealed(path: &Path) -> Result<Sealed, StoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Sealed::Missing),
        Err(err) => return Err(io_err("open", path)(err)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Ok(Sealed::Invalid(format!(
            "larger than {MAX_STATE_BYTES} bytes"
        )));
    }
    match unseal(&bytes) {
        Ok(state) if state.version != STATE_VERSION => Err(StoreError::UnsupportedVersion {
            path: path.to_owned(),
            found: state.version,
            supported: STATE_VERSION,
        }),
        Ok(state) => Ok(Sealed::Valid(state)),
        Err(reason) => Ok(Sealed::Invalid(reason)),
    }
}

/// Takes the exclusive lock of the state directory and writes our pid into the lock file.
fn lock_dir(dir: &Path) -> Result<Flock<File>, StoreError> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("open lock file", &path))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => {
            let holder = fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            return Err(StoreError::Locked { path, holder });
        }
        Err((_, errno)) => return Err(io_err("lock", &path)(io::Error::from(errno))),
    };
    // The pid is for the operator reading a `Locked` error; the lock itself is the flock.
    lock.set_len(0)
        .and_then(|()| lock.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .map_err(io_err("write lock file", &path))?;
    Ok(lock)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    file.write_all(bytes).map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("fsync", path))
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(err)),
        _ => Ok(()),
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cidr() -> Prefix {
        "198.19.1.0/24".parse().unwrap()
    }

    fn open(dir: &Path) -> Result<(Store, StateFile), StoreError> {
        Store::open(dir, "node-a", cidr())
    }

    fn record(n: u8) -> EndpointRecord {
        EndpointRecord {
            key: AttachmentKey {
                container_id: format!("c0ffee{n}"),
                ifname: "eth0".into(),
            },
            netns: format!("/run/netns/pod-{n}"),
            ifname: "eth0".into(),
            ip: Ipv4Addr::new(198, 19, 1, n),
            mac: format!("02:00:c6:13:01:{n:02x}"),
            tap: format!("slc{n}"),
            pod_namespace: Some("default".into()),
            pod_name: Some(format!("web-{n}")),
            pod_uid: (n & 1 == 0).then(|| format!("uid-{n}")),
            created_unix: 1_700_000_000 + u64::from(n),
        }
    }

    fn state_with(endpoints: &[u8]) -> StateFile {
        StateFile {
            endpoints: endpoints.iter().map(|n| record(*n)).collect(),
            applied_objects: vec!["kind: Policy\nname: deny-all\n".into()],
            last_allocated: endpoints.last().map(|n| Ipv4Addr::new(198, 19, 1, *n)),
            ..StateFile::new("node-a", cidr())
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn fresh_directory_is_created_private_and_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("var/lib/sluice");
        let (store, state) = open(&dir).unwrap();
        assert_eq!(store.outcome(), &LoadOutcome::Fresh);
        assert_eq!(state, StateFile::new("node-a", cidr()));
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(
            fs::read_to_string(dir.join(LOCK)).unwrap(),
            format!("{}\n", std::process::id())
        );
    }

    #[test]
    fn save_and_load_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path()).unwrap();
        assert_eq!(store.save(&state_with(&[5])).unwrap(), 1);
        let saved = state_with(&[5, 6, 7]);
        assert_eq!(store.save(&saved).unwrap(), 2);
        assert_eq!(store.generation(), 2);
        drop(store);

        let (store, state) = open(tmp.path()).unwrap();
        assert_eq!(store.outcome(), &LoadOutcome::Loaded);
        assert_eq!(
            state,
            StateFile {
                generation: 2,
                ..saved
            }
        );
        assert_eq!(names(tmp.path()), [LOCK, STATE, BACKUP]);
        // The backup holds the generation before.
        let backup = unseal(&fs::read(tmp.path().join(BACKUP)).unwrap()).unwrap();
        assert_eq!(backup.generation, 1);
        assert_eq!(backup.endpoints, [record(5)]);
        // The file reads as a JSON stream: the state, then the seal.
        let text = fs::read_to_string(tmp.path().join(STATE)).unwrap();
        let values: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&text)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(values.len(), 2);
        assert_eq!(values[0]["generation"], 2);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut value = serde_json::to_value(state_with(&[5])).unwrap();
        value["endpoints"][0]["tapp"] = "x".into();
        assert!(serde_json::from_value::<StateFile>(value).is_err());
        let mut value = serde_json::to_value(state_with(&[5])).unwrap();
        value["podCidr"] = "x".into();
        assert!(serde_json::from_value::<StateFile>(value).is_err());
    }

    /// Two generations on disk: state.json holds `state_with(&[1, 2, 3])` (generation 2), the
    /// backup `state_with(&[1])` (generation 1).
    fn two_generations(dir: &Path) -> Vec<u8> {
        let (mut store, _) = open(dir).unwrap();
        store.save(&state_with(&[1])).unwrap();
        store.save(&state_with(&[1, 2, 3])).unwrap();
        fs::read(dir.join(STATE)).unwrap()
    }

    #[test]
    fn truncation_at_every_length_falls_back_to_the_backup() {
        let tmp = tempfile::tempdir().unwrap();
        let full = two_generations(tmp.path());
        let backup = fs::read(tmp.path().join(BACKUP)).unwrap();
        for len in 0..full.len() {
            fs::write(tmp.path().join(STATE), &full[..len]).unwrap();
            fs::write(tmp.path().join(BACKUP), &backup).unwrap();
            let (store, state) = open(tmp.path()).unwrap();
            assert!(
                matches!(store.outcome(), LoadOutcome::RecoveredFromBackup { .. }),
                "truncated to {len}: {:?}",
                store.outcome()
            );
            assert_eq!(state.generation, 1, "truncated to {len}");
            assert_eq!(state.endpoints, [record(1)]);
            assert_eq!(
                fs::read(tmp.path().join(CORRUPT)).unwrap(),
                &full[..len],
                "damaged file set aside"
            );
        }
    }

    #[test]
    fn truncation_without_backup_is_corrupt_never_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let full = two_generations(tmp.path());
        fs::remove_file(tmp.path().join(BACKUP)).unwrap();
        for len in 0..full.len() {
            fs::write(tmp.path().join(STATE), &full[..len]).unwrap();
            match open(tmp.path()) {
                Err(StoreError::Corrupt {
                    path,
                    reason,
                    advice,
                }) => {
                    assert_eq!(path, tmp.path().join(STATE));
                    assert!(reason.contains("missing"), "{reason}");
                    assert!(advice.contains("--recover"), "{advice}");
                }
                other => panic!("truncated to {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn rebuild_sets_damaged_files_aside_and_starts_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let full = two_generations(tmp.path());
        fs::write(tmp.path().join(STATE), &full[..full.len() / 2]).unwrap();
        fs::write(tmp.path().join(BACKUP), b"{}").unwrap();
        assert!(matches!(open(tmp.path()), Err(StoreError::Corrupt { .. })));
        let (mut store, state) = Store::open_or_rebuild(tmp.path(), "node-a", cidr()).unwrap();
        match store.outcome() {
            LoadOutcome::Rebuild { reason } => {
                assert!(reason.contains("truncated"), "{reason}");
                assert!(reason.contains(BACKUP_CORRUPT), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(state, StateFile::new("node-a", cidr()));
        assert_eq!(names(tmp.path()), [LOCK, BACKUP_CORRUPT, CORRUPT]);
        assert_eq!(fs::read(tmp.path().join(BACKUP_CORRUPT)).unwrap(), b"{}");
        store.save(&state_with(&[4])).unwrap();
        drop(store);
        // The rebuilt state is what the next start loads.
        let (store, state) = open(tmp.path()).unwrap();
        assert_eq!(store.outcome(), &LoadOutcome::Loaded);
        assert_eq!(state.endpoints, [record(4)]);
        // A valid state is loaded as usual, with nothing set aside.
        drop(store);
        let (store, _) = Store::open_or_rebuild(tmp.path(), "node-a", cidr()).unwrap();
        assert_eq!(store.outcome(), &LoadOutcome::Loaded);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = seal(&state_with(&[1, 2])).unwrap();
        assert!(unseal(&bytes).is_ok());
        for at in 0..bytes.len() {
            for bit in [0x01, 0x20, 0x80] {
                let mut damaged = bytes.clone();
                damaged[at] ^= bit;
                assert!(
                    unseal(&damaged).is_err(),
                    "flip {bit:#x} at {at} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn flipped_byte_in_both_files_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        two_generations(tmp.path());
        for name in [STATE, BACKUP] {
            let path = tmp.path().join(name);
            let mut bytes = fs::read(&path).unwrap();
            bytes[40] ^= 0x04;
            fs::write(&path, bytes).unwrap();
        }
        let err = open(tmp.path()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(text.contains("corrupted"), "{text}");
        assert!(text.contains(BACKUP), "{text}");
    }

    #[test]
    fn missing_state_with_backup_is_recovered() {
        let tmp = tempfile::tempdir().unwrap();
        two_generations(tmp.path());
        fs::remove_file(tmp.path().join(STATE)).unwrap();
        let (mut store, state) = open(tmp.path()).unwrap();
        match store.outcome() {
            LoadOutcome::RecoveredFromBackup { reason } => {
                assert!(reason.contains("is missing"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(state.generation, 1);
        // The next save goes on from the recovered generation and keeps the valid backup.
        assert_eq!(store.save(&state).unwrap(), 2);
        drop(store);
        let (store, state) = open(tmp.path()).unwrap();
        assert_eq!(
            (store.outcome(), state.generation),
            (&LoadOutcome::Loaded, 2)
        );
    }

    #[test]
    fn damaged_state_is_not_made_the_backup() {
        let tmp = tempfile::tempdir().unwrap();
        two_generations(tmp.path());
        fs::write(tmp.path().join(STATE), b"{}").unwrap();
        let (mut store, state) = open(tmp.path()).unwrap();
        assert_eq!(state.generation, 1);
        store.save(&state_with(&[1, 9])).unwrap();
        let backup = unseal(&fs::read(tmp.path().join(BACKUP)).unwrap()).unwrap();
        assert_eq!(backup.generation, 1);
    }

    #[test]
    fn crash_at_every_step_of_a_save_leaves_a_valid_state() {
        let steps = [
            (SaveStep::TmpWritten, 2),
            (SaveStep::BackupLinked, 2),
            (SaveStep::BackupRenamed, 2),
            (SaveStep::Renamed, 3),
        ];
        for (step, generation) in steps {
            let tmp = tempfile::tempdir().unwrap();
            two_generations(tmp.path());
            let (mut store, _) = open(tmp.path()).unwrap();
            store
                .save_until(&state_with(&[1, 2, 3, 4]), Some(step))
                .unwrap();
            drop(store); // the crash: the lock goes with the process

            let (store, state) = open(tmp.path()).unwrap();
            assert_eq!(store.outcome(), &LoadOutcome::Loaded, "{step:?}");
            assert_eq!(state.generation, generation, "{step:?}");
            assert_eq!(names(tmp.path()), [LOCK, STATE, BACKUP], "{step:?}");
            let backup = unseal(&fs::read(tmp.path().join(BACKUP)).unwrap()).unwrap();
            assert!(backup.generation <= state.generation, "{step:?}");
        }
    }

    #[test]
    fn leftover_tmp_files_are_ignored_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        two_generations(tmp.path());
        // A crash in the middle of writing the next generation.
        let next = seal(&state_with(&[7])).unwrap();
        fs::write(tmp.path().join(STATE_TMP), &next[..next.len() / 2]).unwrap();
        fs::write(tmp.path().join(BACKUP_TMP), b"garbage").unwrap();
        let (store, state) = open(tmp.path()).unwrap();
        assert_eq!(store.outcome(), &LoadOutcome::Loaded);
        assert_eq!(state.generation, 2);
        assert_eq!(names(tmp.path()), [LOCK, STATE, BACKUP]);
    }

    #[test]
    fn second_open_of_a_directory_is_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path()).unwrap();
        // flock locks belong to the open file description: a second open conflicts even in
        // the same process.
        match open(tmp.path()) {
            Err(err @ StoreError::Locked { .. }) => {
                let text = err.to_string();
                assert!(
                    text.contains(&format!("pid {}", std::process::id())),
                    "{text}"
                );
                let StoreError::Locked { path, holder } = err else {
                    unreachable!()
                };
                assert_eq!(path, tmp.path().join(LOCK));
                assert_eq!(holder, Some(std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(store);
        open(tmp.path()).unwrap();
    }

    #[test]
    fn changed_pod_cidr_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        two_generations(tmp.path());
        let other: Prefix = "198.19.2.0/24".parse().unwrap();
        match Store::open(tmp.path(), "node-a", other) {
            Err(StoreError::CidrChanged { stored, configured }) => {
                assert_eq!(
                    (stored.as_str(), configured.as_str()),
                    ("198.19.1.0/24", "198.19.2.0/24")
                )
            }
            other => panic!("expected CidrChanged, got {other:?}"),
        }
        // Saving a state for another CIDR is refused too.
        let (mut store, _) = open(tmp.path()).unwrap();
        let foreign = StateFile::new("node-a", other);
        assert!(matches!(
            store.save(&foreign),
            Err(StoreError::CidrChanged { .. })
        ));
        assert_eq!(store.generation(), 2);
    }

    #[test]
    fn newer_format_is_refused_not_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let newer = StateFile {
            version: STATE_VERSION + 1,
            ..StateFile::new("node-a", cidr())
        };
        fs::write(tmp.path().join(STATE), seal(&newer).unwrap()).unwrap();
        match open(tmp.path()) {
            Err(StoreError::UnsupportedVersion { found, .. }) => {
                assert_eq!(found, STATE_VERSION + 1)
            }
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
    }

    #[test]
    fn oversized_file_is_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        let file = File::create(tmp.path().join(STATE)).unwrap();
        file.set_len(MAX_STATE_BYTES + 1).unwrap(); // sparse
        let err = open(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }
}
