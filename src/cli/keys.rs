//! `hil keys`: P-256 key pairs for the local cloud and for devices, in the files the cloud
//! (`hil cloud --keys DIR`), the emulated device and a real board (through `particle keys`)
//! use. File names and formats: `harness::keys`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use harness::keys::{generate_key, DeviceId, KeyDir, KeyError, KeyFiles, KeyRng, VerifyingKey};

use super::CliResult;

const FILES_HELP: &str = "\
Files (in DIR):
  server.der            server private key, SEC1 ECPrivateKey DER
  server.pem            the same, PEM
  server.pub.der        server public key, SubjectPublicKeyInfo DER (91 bytes); a real board
                        pins it with `particle keys server server.pub.der --host <this host>`
  server.pub.pem        the same, PEM
  device-<id>.der       device private key, SEC1 ECPrivateKey DER (what Device OS keeps)
  device-<id>.pem       the same, PEM
  device-<id>.pub.der   device public key, SubjectPublicKeyInfo DER (91 bytes)
  device-<id>.pub.pem   the same, PEM
<id> is the 12-byte device id as 24 lowercase hex digits. The cloud also registers the files
`particle keys save` writes for a real board (<id>.der, <id>.pub.pem) when they are put in DIR.";

#[derive(Subcommand)]
#[command(after_help = FILES_HELP)]
pub enum KeysCommand {
    /// Generate the cloud's key pair: server.der, server.pem, server.pub.der, server.pub.pem.
    #[command(after_help = FILES_HELP)]
    Server(ServerArgs),
    /// Generate a device key pair and id: device-<id>.der, .pem, .pub.der, .pub.pem. Prints the
    /// id.
    #[command(after_help = FILES_HELP)]
    Device(DeviceArgs),
    /// List the server key and every device key in a directory.
    #[command(after_help = FILES_HELP)]
    List {
        /// The key directory.
        dir: PathBuf,
    },
}

#[derive(Args)]
pub struct ServerArgs {
    /// The key directory (created if needed).
    dir: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct DeviceArgs {
    /// The key directory (created if needed).
    dir: PathBuf,
    /// The device id, 24 hex digits (default: 12 random bytes).
    #[arg(long, value_name = "HEX")]
    id: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct Common {
    /// Derive the key (and a random id) from this seed instead of the operating system's RNG:
    /// reproducible keys for tests, never for a real cloud or board.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Replace existing key files (by default an existing key is never overwritten).
    #[arg(long)]
    force: bool,
}

pub fn run(cmd: KeysCommand) -> CliResult {
    match cmd {
        KeysCommand::Server(args) => {
            let mut rng = KeyRng::new(args.common.seed);
            let key = generate_key(&mut rng);
            let files = KeyDir::new(&args.dir)
                .write_server_key(&key, args.common.force)
                .map_err(suggest_force)?;
            println!("server key pair");
            print_files(&files);
        }
        KeysCommand::Device(args) => {
            // Parse the id before anything is generated or written.
            let given: Option<DeviceId> = args.id.as_deref().map(str::parse).transpose()?;
            let mut rng = KeyRng::new(args.common.seed);
            let id = given.unwrap_or_else(|| DeviceId::random(&mut rng));
            let key = generate_key(&mut rng);
            let files = KeyDir::new(&args.dir)
                .write_device_key(&id, &key, args.common.force)
                .map_err(suggest_force)?;
            println!("device id {id}");
            print_files(&files);
        }
        KeysCommand::List { dir } => {
            let keys = KeyDir::new(&dir);
            match keys.server_public_key() {
                Ok(key) => println!("server {}", fingerprint(&key)),
                Err(e) => println!("server: none ({e})"),
            }
            for (id, key) in keys.device_keys()? {
                println!("device {} {}", DeviceId(id), fingerprint(&key));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn suggest_force(e: KeyError) -> Box<dyn std::error::Error> {
    match e {
        KeyError::Exists { path } => format!(
            "{} already exists; nothing was written (--force replaces the key pair)",
            path.display()
        )
        .into(),
        other => other.into(),
    }
}

fn print_files(files: &KeyFiles) {
    println!(
        "  private key  {} (SEC1 DER), {} (PEM)",
        files.private_der.display(),
        files.private_pem.display()
    );
    println!(
        "  public key   {} (SubjectPublicKeyInfo DER, 91 bytes), {} (PEM)",
        files.public_der.display(),
        files.public_pem.display()
    );
}

/// The first 8 bytes of the public point's X coordinate, enough to tell keys apart by eye.
fn fingerprint(key: &VerifyingKey) -> String {
    let der = harness::keys::public_key_der(key);
    let x = der.get(27..35).unwrap_or_default();
    format!(
        "public key {}…",
        x.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}
