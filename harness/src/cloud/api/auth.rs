//! Access tokens of the REST API (reference `particle-cloud-api.md` 1.1-1.2) and the token file
//! `hil cloud --token-file FILE` reads.
//!
//! The token file is TOML, one `[[token]]` table per token:
//!
//! ```toml
//! [[token]]
//! token = "0123456789abcdef0123456789abcdef01234567"   # 40 letters or digits
//! name = "release pipeline"                             # optional, shown nowhere secret
//!
//! [[token]]
//! token = "fedcba9876543210fedcba9876543210fedcba98"
//! products = [1000]                                     # optional scope
//! devices = ["0123456789abcdef01234567"]                # optional scope
//! ```
//!
//! A token with neither `products` nor `devices` may do everything. A scoped token may use the
//! products listed (their firmware, releases, devices and event streams) and the devices listed
//! (flash, settings, events); anything else gets 403 and changes nothing. Creating products is
//! for unscoped tokens only. Tokens are 40 characters because Particle's own GitHub Actions
//! refuse any other length before calling the API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use super::super::fleet::ProductId;
use super::super::DeviceId;

/// What a token may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Limited {
        products: BTreeSet<ProductId>,
        devices: BTreeSet<DeviceId>,
    },
}

impl Scope {
    /// May use this product (its firmware, its device list, its stream).
    pub fn allows_product(&self, product: ProductId) -> bool {
        match self {
            Scope::All => true,
            Scope::Limited { products, .. } => products.contains(&product),
        }
    }

    /// May use this device, which is in `product` (if any).
    pub fn allows_device(&self, device: DeviceId, product: Option<ProductId>) -> bool {
        match self {
            Scope::All => true,
            Scope::Limited { products, devices } => {
                devices.contains(&device) || product.is_some_and(|p| products.contains(&p))
            }
        }
    }

    /// May do everything (create products).
    pub fn is_all(&self) -> bool {
        matches!(self, Scope::All)
    }
}

/// The tokens the API accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: BTreeMap<String, Scope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    products: Option<Vec<ProductId>>,
    devices: Option<Vec<String>>,
}

impl Tokens {
    /// One unscoped token (tests, and a lab that wants one).
    pub fn single(token: &str) -> Tokens {
        let mut tokens = BTreeMap::new();
        tokens.insert(token.to_string(), Scope::All);
        Tokens { tokens }
    }

    /// Parses a token file; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Tokens, String> {
        let file: TokenFile = toml::from_str(text).map_err(|e| format!("{source}: {e}"))?;
        let mut tokens = BTreeMap::new();
        for (n, entry) in file.token.into_iter().enumerate() {
            let at = format!(
                "{source}: token {} (the [[token]] table number {})",
                n + 1,
                n + 1
            );
            if entry.token.len() != 40 || !entry.token.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!(
                    "{at}: a token is 40 letters or digits (Particle's tools refuse other \
                     lengths); this one has {} characters",
                    entry.token.chars().count()
                ));
            }
            let scope = if entry.products.is_none() && entry.devices.is_none() {
                Scope::All
            } else {
                let devices = entry
                    .devices
                    .unwrap_or_default()
                    .iter()
                    .map(|d| d.parse::<DeviceId>().map_err(|e| format!("{at}: {e}")))
                    .collect::<Result<_, _>>()?;
                Scope::Limited {
                    products: entry.products.unwrap_or_default().into_iter().collect(),
                    devices,
                }
            };
            if tokens.insert(entry.token, scope).is_some() {
                return Err(format!("{at}: the same token appears twice"));
            }
        }
        if tokens.is_empty() {
            return Err(format!(
                "{source}: no [[token]] table: the API would refuse every request"
            ));
        }
        Ok(Tokens { tokens })
    }

    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Tokens::parse(&text, &path.display().to_string())
    }

    /// The scope of a token, `None` if it is not one of ours.
    pub fn scope(&self, token: &str) -> Option<&Scope> {
        self.tokens.get(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const B: &str = "fedcba9876543210fedcba9876543210fedcba98";

    #[test]
    fn a_token_file_gives_scopes() {
        let text = format!(
            "[[token]]\ntoken = \"{A}\"\nname = \"ci\"\n\n[[token]]\ntoken = \"{B}\"\n\
             products = [1000]\ndevices = [\"0123456789abcdef01234567\"]\n"
        );
        let t = Tokens::parse(&text, "tokens.toml").unwrap();
        assert_eq!(t.scope(A), Some(&Scope::All));
        let b = t.scope(B).unwrap();
        assert!(b.allows_product(1000) && !b.allows_product(2000));
        let d: DeviceId = "0123456789abcdef01234567".parse().unwrap();
        assert!(b.allows_device(d, None));
        assert!(b.allows_device(DeviceId([9; 12]), Some(1000)));
        assert!(!b.allows_device(DeviceId([9; 12]), Some(2000)));
        assert!(!b.is_all());
        assert_eq!(t.scope("nope"), None);
    }

    #[test]
    fn bad_token_files_are_located() {
        let e = Tokens::parse("[[token]]\ntoken = \"short\"\n", "t.toml").unwrap_err();
        assert!(e.contains("t.toml: token 1") && e.contains("40"), "{e}");
        let e = Tokens::parse("[[token]]\ntokn = \"x\"\n", "t.toml").unwrap_err();
        assert!(e.contains("t.toml") && e.contains("tokn"), "{e}");
        let e = Tokens::parse(
            &format!("[[token]]\ntoken = \"{A}\"\ndevices = [\"xyz\"]\n"),
            "t.toml",
        )
        .unwrap_err();
        assert!(e.contains("device id \"xyz\""), "{e}");
        assert!(Tokens::parse("", "t.toml")
            .unwrap_err()
            .contains("no [[token]]"));
    }
}
