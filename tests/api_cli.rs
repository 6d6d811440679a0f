//! `hil cloud`'s API flags refuse what they cannot use before serving anything: a token file
//! that is not TOML or holds a short token, a products file with an unknown platform, `--api`
//! without `--token-file`, each with a message naming the file and what is wrong.

mod api_support;

use std::process::Command;

use api_support::*;

fn refused(args: &[&str]) -> String {
    let out = Command::new(HIL).args(args).output().expect("run hil");
    assert!(!out.status.success(), "hil {args:?} was not refused");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn bad_api_files_are_refused_with_their_name() {
    let dir = std::env::temp_dir().join(format!("hil-api-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let keys = dir.join("keys");
    hil(&["keys", "server", s(&keys), "--seed", "1"]);
    let udp = format!("127.0.0.1:{}", free_udp_port());
    let api = format!("127.0.0.1:{}", free_tcp_port());
    let base = ["cloud", "--listen", &udp, "--keys", s(&keys), "--api", &api];

    let short = dir.join("short.toml");
    std::fs::write(&short, "[[token]]\ntoken = \"abc\"\n").expect("file");
    let e = refused(&[&base[..], &["--token-file", s(&short)]].concat());
    assert!(e.contains("short.toml: token 1") && e.contains("40"), "{e}");

    let garbled = dir.join("garbled.toml");
    std::fs::write(&garbled, "[[token]\ntoken = ").expect("file");
    let e = refused(&[&base[..], &["--token-file", s(&garbled)]].concat());
    assert!(e.contains("garbled.toml"), "{e}");

    let tokens = dir.join("tokens.toml");
    std::fs::write(&tokens, format!("[[token]]\ntoken = \"{TOKEN}\"\n")).expect("file");
    let products = dir.join("products.toml");
    std::fs::write(&products, "[[product]]\nid = 7\nplatform = \"toaster\"\n").expect("file");
    let e = refused(
        &[
            &base[..],
            &["--token-file", s(&tokens), "--products", s(&products)],
        ]
        .concat(),
    );
    assert!(
        e.contains("products.toml: product 7") && e.contains("toaster"),
        "{e}"
    );

    let e = refused(&base);
    assert!(e.contains("--token-file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
