//! `hil keys` as a user runs it: key pairs written into a directory, loaded back with
//! `harness::keys` the way the cloud and the device load them, in the formats a real board
//! takes (reference 1.2: SEC1 DER private keys, 91-byte SubjectPublicKeyInfo public keys).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::keys::{load_signing_key, load_verifying_key, DeviceId, KeyDir};
use protocol::dtls::keys::{signing_key_from_der, verifying_key_from_spki};

fn hil(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hil"))
        .arg("keys")
        .args(args.iter().take(1))
        .arg(dir)
        .args(args.iter().skip(1))
        .output()
        .expect("run hil")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "hil failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hil-keys-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The id from "device id <hex>" on the first line.
fn printed_id(stdout: &str) -> DeviceId {
    let line = stdout.lines().next().unwrap_or_default();
    line.strip_prefix("device id ")
        .unwrap_or_else(|| panic!("first line {line:?}"))
        .parse()
        .unwrap()
}

#[test]
fn server_keys_are_written_in_every_form_and_load_back_as_one_pair() {
    let dir = tempdir("server");
    let out = ok(hil(&["server"], &dir));
    for name in [
        "server.der",
        "server.pem",
        "server.pub.der",
        "server.pub.pem",
    ] {
        assert!(out.contains(name), "{name} not named in:\n{out}");
    }
    let keys = KeyDir::new(&dir);
    let private = keys.server_key().unwrap();
    let public = keys.server_public_key().unwrap();
    assert_eq!(*private.verifying_key(), public);
    assert_eq!(load_signing_key(dir.join("server.pem")).unwrap(), private);
    assert_eq!(
        load_verifying_key(dir.join("server.pub.pem")).unwrap(),
        public
    );

    // What a device pins: the 91-byte SubjectPublicKeyInfo with the P-256 prefix.
    let spki = std::fs::read(dir.join("server.pub.der")).unwrap();
    assert_eq!(spki.len(), 91);
    assert_eq!(
        &spki[..27],
        &[
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04
        ]
    );
    assert_eq!(verifying_key_from_spki(&spki).unwrap(), public);
    // The DTLS layer takes the private key as it is.
    let der = std::fs::read(dir.join("server.der")).unwrap();
    assert_eq!(signing_key_from_der(&der).unwrap(), private);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_device_key_with_a_given_id_is_printed_stored_and_registered() {
    let dir = tempdir("device-id");
    let out = ok(hil(&["device", "--id", "E00FCE68AABBCCDDEEFF0011"], &dir));
    let id = printed_id(&out);
    assert_eq!(id.to_string(), "e00fce68aabbccddeeff0011");
    let keys = KeyDir::new(&dir);
    let private = keys.device_signing_key(&id).unwrap();
    assert_eq!(
        keys.device_keys().unwrap(),
        vec![(id.0, *private.verifying_key())]
    );
    for ext in ["der", "pem", "pub.der", "pub.pem"] {
        assert!(dir.join(format!("device-{id}.{ext}")).exists(), "{ext}");
    }
    // Device OS's DCT slot holds the SEC1 DER (at most 192 bytes).
    let der = std::fs::read(dir.join(format!("device-{id}.der"))).unwrap();
    assert!(der.len() <= 192);
    assert_eq!(&der[..7], &[0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn random_device_ids_differ_and_every_device_is_listed() {
    let dir = tempdir("device-random");
    ok(hil(&["server"], &dir));
    let a = printed_id(&ok(hil(&["device"], &dir)));
    let b = printed_id(&ok(hil(&["device"], &dir)));
    assert_ne!(a, b);
    let mut want = vec![a, b];
    want.sort();
    let listed: Vec<DeviceId> = KeyDir::new(&dir)
        .device_keys()
        .unwrap()
        .into_iter()
        .map(|(id, _)| DeviceId(id))
        .collect();
    assert_eq!(listed, want);
    let list = ok(hil(&["list"], &dir));
    assert!(list.starts_with("server public key "), "{list}");
    assert!(list.contains(&format!("device {a} ")), "{list}");
    assert!(list.contains(&format!("device {b} ")), "{list}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_seed_reproduces_the_same_keys_and_id() {
    let (one, two, other) = (tempdir("seed-1"), tempdir("seed-2"), tempdir("seed-3"));
    for dir in [&one, &two] {
        ok(hil(&["server", "--seed", "7"], dir));
    }
    ok(hil(&["server", "--seed", "8"], &other));
    let read = |d: &Path| std::fs::read(d.join("server.der")).unwrap();
    assert_eq!(read(&one), read(&two));
    assert_ne!(read(&one), read(&other));
    let a = printed_id(&ok(hil(&["device", "--seed", "7"], &one)));
    let b = printed_id(&ok(hil(&["device", "--seed", "7"], &two)));
    assert_eq!(a, b);
    assert_eq!(
        std::fs::read(one.join(format!("device-{a}.der"))).unwrap(),
        std::fs::read(two.join(format!("device-{b}.der"))).unwrap()
    );
    for d in [one, two, other] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_bad_device_id_is_refused_with_a_clear_error_and_nothing_is_written() {
    let dir = tempdir("bad-id");
    for bad in [
        "xyz",
        "0123456789abcdef0123456",
        "0123456789abcdef012345678",
        "0123456789abcdef0123456g",
        "",
    ] {
        let out = hil(&["device", "--id", bad], &dir);
        assert!(!out.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("24 hex digits"), "{bad:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none());
}

#[test]
fn existing_keys_are_kept_unless_forced() {
    let dir = tempdir("force");
    ok(hil(&["server", "--seed", "1"], &dir));
    let before = std::fs::read(dir.join("server.der")).unwrap();
    let out = hil(&["server", "--seed", "2"], &dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("server.der")).unwrap(), before);
    ok(hil(&["server", "--seed", "2", "--force"], &dir));
    assert_ne!(std::fs::read(dir.join("server.der")).unwrap(), before);
    let id = "0123456789abcdef01234567";
    ok(hil(&["device", "--id", id], &dir));
    assert!(!hil(&["device", "--id", id], &dir).status.success());
    ok(hil(&["device", "--id", id, "--force"], &dir));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_help_documents_the_file_names() {
    let out = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args(["keys", "device", "--help"])
        .output()
        .unwrap();
    let help = ok(out);
    for name in [
        "device-<id>.der",
        "device-<id>.pub.der",
        "server.pub.der",
        "91 bytes",
    ] {
        assert!(help.contains(name), "{name} missing from:\n{help}");
    }
}

/// openssl, when installed, reads our files and writes files we read (`particle keys` drives
/// openssl for the same formats). Without openssl there is nothing to compare with.
#[test]
fn openssl_and_hil_read_each_others_key_files() {
    let openssl = |args: &[&str]| Command::new("openssl").args(args).output();
    if openssl(&["version"]).is_err() {
        eprintln!("openssl is not installed: interop not checked");
        return;
    }
    let dir = tempdir("openssl");
    ok(hil(&["server", "--seed", "3"], &dir));
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    for args in [
        vec![
            "ec",
            "-inform",
            "DER",
            "-in",
            &p("server.der"),
            "-noout",
            "-check",
        ],
        vec!["ec", "-in", &p("server.pem"), "-noout", "-check"],
        vec![
            "pkey",
            "-pubin",
            "-inform",
            "DER",
            "-in",
            &p("server.pub.der"),
            "-noout",
        ],
        vec!["pkey", "-pubin", "-in", &p("server.pub.pem"), "-noout"],
    ] {
        let out = openssl(&args).unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // openssl's own forms: ecparam with its EC PARAMETERS block, PKCS#8 PEM and DER, the
    // public key as `particle keys save` derives it.
    let steps: [&[&str]; 5] = [
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-out",
            &p("o.pem"),
        ],
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &p("o.pem"),
            "-out",
            &p("o8.pem"),
        ],
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &p("o.pem"),
            "-outform",
            "DER",
            "-out",
            &p("o8.der"),
        ],
        &[
            "ec",
            "-in",
            &p("o.pem"),
            "-outform",
            "DER",
            "-out",
            &p("o.der"),
        ],
        &["ec", "-in", &p("o.pem"), "-pubout", "-out", &p("o.pub.pem")],
    ];
    for args in steps {
        let out = openssl(args).unwrap();
        assert!(out.status.success(), "openssl {args:?}");
    }
    let key = load_signing_key(dir.join("o.pem")).unwrap();
    for name in ["o8.pem", "o8.der", "o.der"] {
        assert_eq!(load_signing_key(dir.join(name)).unwrap(), key, "{name}");
    }
    assert_eq!(
        load_verifying_key(dir.join("o.pub.pem")).unwrap(),
        *key.verifying_key()
    );
    // openssl's SEC1 DER is byte for byte the layout hil writes.
    let theirs = std::fs::read(dir.join("o.der")).unwrap();
    assert_eq!(theirs, harness::keys::private_key_der(&key));
    let _ = std::fs::remove_dir_all(dir);
}
