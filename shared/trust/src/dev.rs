//! Dev certificates: a CA generated once per folder, and one certificate per role signed by it.
//!
//! Several services start at once on one folder (the one-command platform's four), so each
//! piece is written into a private temporary folder and renamed into place: the first rename
//! wins, the others read what won. Keys are 0600, the folder 0700. Never used in production
//! (see [`crate::Trust::resolve`]).

use crate::TrustError;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where a role's certificate and the CA are.
#[derive(Debug, Clone)]
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

const CA_NAME: &str = "tcc-pay dev CA";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrustError + '_ {
    move |source| TrustError::Io {
        path: path.to_owned(),
        source,
    }
}

fn gen(e: rcgen::Error) -> TrustError {
    TrustError::Invalid(format!("cannot generate a dev certificate: {e}"))
}

/// The CA's parameters: the same every time, so a CA read back from its files signs
/// certificates that name it exactly as its own certificate does.
fn ca_params() -> Result<CertificateParams, TrustError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, CA_NAME);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// Writes `files` (name, contents, private?) into `dir/name_of_piece` unless it is there.
fn place(dir: &Path, piece: &str, files: &[(&str, String, bool)]) -> Result<PathBuf, TrustError> {
    let target = dir.join(piece);
    if target.exists() {
        return Ok(target);
    }
    sweep_abandoned(dir, piece);
    let tmp = dir.join(format!(".{piece}-{}-{:x}", std::process::id(), rand_u64()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(io(&tmp))?;
    for (name, contents, private) in files {
        let path = tmp.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if *private { 0o600 } else { 0o644 })
            .open(&path)
            .map_err(io(&path))?;
        std::io::Write::write_all(&mut f, contents.as_bytes()).map_err(io(&path))?;
        // On disk before the rename makes it visible: a power cut never leaves an empty key.
        f.sync_all().map_err(io(&path))?;
    }
    match std::fs::rename(&tmp, &target) {
        Ok(()) => {
            // The rename itself, durable.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
            Ok(target)
        }
        // Another process placed it first: use theirs.
        Err(_) if target.exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(target)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(io(&target)(e))
        }
    }
}

/// Removes the temporary folders of `piece` that a process killed before its rename left
/// behind (`.<piece>-<pid>-<n>` of a pid that no longer runs).
fn sweep_abandoned(dir: &Path, piece: &str) {
    let prefix = format!(".{piece}-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// Where `role`'s certificate and the CA are in a folder [`issue`] filled.
pub fn files_in(dir: &Path, role: &str) -> Files {
    Files {
        ca: dir.join("ca").join("ca.pem"),
        cert: dir.join(role).join("cert.pem"),
        key: dir.join(role).join("key.pem"),
    }
}

/// The CA of `dir` (generated if the folder has none), and the certificate of `role` signed
/// by it (generated if missing), valid for the name `role` (what clients check: they pin the
/// role they call), `localhost` and the loopback addresses (dev on one host).
pub fn issue(dir: &Path, role: &str) -> Result<Files, TrustError> {
    let have = files_in(dir, role);
    if have.ca.exists() && have.cert.exists() && have.key.exists() {
        // Issued before (or handed out by `split`: no CA key needed to use it).
        return Ok(have);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let ca_dir = if dir.join("ca").exists() {
        dir.join("ca")
    } else {
        let key = KeyPair::generate().map_err(gen)?;
        let cert = ca_params()?.self_signed(&key).map_err(gen)?;
        place(
            dir,
            "ca",
            &[
                ("ca.pem", cert.pem(), false),
                ("ca.key", key.serialize_pem(), true),
            ],
        )?
    };
    let ca_key_path = ca_dir.join("ca.key");
    let ca_key = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key).map_err(gen)?;
    let issuer = Issuer::new(ca_params()?, ca_key);

    // Missing (the early return above): issue it; `place` keeps a racing process's instead.
    {
        let key = KeyPair::generate().map_err(gen)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
        p.distinguished_name.push(DnType::CommonName, role);
        let sans = vec![
            SanType::DnsName(role.try_into().map_err(gen)?),
            SanType::DnsName("localhost".try_into().map_err(gen)?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        p.subject_alt_names = sans;
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = p.signed_by(&key, &issuer).map_err(gen)?;
        place(
            dir,
            role,
            &[
                ("cert.pem", cert.pem(), false),
                ("key.pem", key.serialize_pem(), true),
            ],
        )?;
    }
    Ok(files_in(dir, role))
}

/// Copies what the service `role` needs from the issuing folder `issued` into `to`: the CA's
/// certificate and its own certificate and key, in the layout [`files_in`] reads, without the
/// CA's key or anyone else's. Each service gets such a folder of its own.
pub fn split(issued: &Path, role: &str, to: &Path) -> Result<Files, TrustError> {
    let from = issue(issued, role)?;
    let dest = files_in(to, role);
    for (src, dst, private) in [
        (&from.ca, &dest.ca, false),
        (&from.cert, &dest.cert, false),
        (&from.key, &dest.key, true),
    ] {
        let parent = dst.parent().expect("a file in a folder");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io(parent))?;
        let bytes = std::fs::read(src).map_err(io(src))?;
        let _ = std::fs::remove_file(dst);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(dst)
            .map_err(io(dst))?;
        std::io::Write::write_all(&mut f, &bytes).map_err(io(dst))?;
    }
    Ok(dest)
}
