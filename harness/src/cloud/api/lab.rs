//! Products declared at start-up (`hil cloud --products FILE`), for a lab that wants its
//! products there without calling `POST /v1/products`. The file is TOML:
//!
//! ```toml
//! [[product]]
//! id = 1000
//! name = "trackers"                                   # optional, default the id
//! platform = "boron"                                  # a board name, or platform_id = 13
//! devices = ["0123456789abcdef01234567"]              # optional
//! ```
//!
//! A declared product that already exists (from `--state`) must have the same platform; its
//! devices are added if missing. Nothing else of a saved product is changed.

use std::time::Duration;

use serde::Deserialize;

use super::super::fleet::ProductId;
use super::super::{Cloud, DeviceId};

/// The platform id of a board name (`boron`, `p2`...) or of a number.
pub fn platform_id(name: &str) -> Result<u16, String> {
    if let Ok(n) = name.trim().parse::<u16>() {
        return Ok(n);
    }
    emulator::board::Board::builtin(&name.trim().to_ascii_lowercase())
        .map(|b| b.platform_id)
        .map_err(|_| {
            format!(
                "`{name}` is not a platform: give a platform id or one of {}",
                emulator::board::Board::builtin_names().join(", ")
            )
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductsFile {
    #[serde(default)]
    product: Vec<Declared>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Declared {
    id: ProductId,
    name: Option<String>,
    platform: Option<String>,
    platform_id: Option<u16>,
    #[serde(default)]
    devices: Vec<String>,
}

/// One declared product, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredProduct {
    pub id: ProductId,
    pub name: String,
    pub platform_id: u16,
    pub devices: Vec<DeviceId>,
}

/// Parses a products file; `source` names it in errors.
pub fn parse_products(text: &str, source: &str) -> Result<Vec<DeclaredProduct>, String> {
    let file: ProductsFile = toml::from_str(text).map_err(|e| format!("{source}: {e}"))?;
    file.product
        .into_iter()
        .map(|d| {
            let at = format!("{source}: product {}", d.id);
            let platform_id = match (d.platform_id, &d.platform) {
                (Some(id), None) => id,
                (None, Some(name)) => platform_id(name).map_err(|e| format!("{at}: {e}"))?,
                _ => {
                    return Err(format!(
                        "{at}: give one of `platform` (a board name) or `platform_id`"
                    ))
                }
            };
            let devices = d
                .devices
                .iter()
                .map(|t| t.parse().map_err(|e| format!("{at}: {e}")))
                .collect::<Result<_, _>>()?;
            Ok(DeclaredProduct {
                id: d.id,
                name: d.name.unwrap_or_else(|| d.id.to_string()),
                platform_id,
                devices,
            })
        })
        .collect()
}

/// Creates the declared products that do not exist and adds their devices.
pub fn declare(
    cloud: &mut Cloud,
    now: Duration,
    products: &[DeclaredProduct],
) -> Result<(), String> {
    for d in products {
        match cloud.fleet().product(d.id) {
            Some(p) if p.platform_id != d.platform_id => {
                return Err(format!(
                    "product {} is declared for platform {} but exists for platform {}",
                    d.id, d.platform_id, p.platform_id
                ))
            }
            Some(_) => {}
            None => cloud
                .create_product(d.id, &d.name, d.platform_id)
                .map_err(|e| e.to_string())?,
        }
        for device in &d.devices {
            if cloud.fleet().product_of(*device) != Some(d.id) {
                cloud
                    .add_product_device(now, d.id, *device)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_file_names_platforms_by_board_or_id() {
        let text = "[[product]]\nid = 1000\nplatform = \"boron\"\n\
                    devices = [\"0123456789abcdef01234567\"]\n\n\
                    [[product]]\nid = 2000\nname = \"p2s\"\nplatform_id = 32\n";
        let p = parse_products(text, "products.toml").unwrap();
        assert_eq!(p[0].platform_id, 13);
        assert_eq!(p[0].name, "1000");
        assert_eq!(p[0].devices.len(), 1);
        assert_eq!(p[1].platform_id, 32);
        let e = parse_products("[[product]]\nid = 1\nplatform = \"toaster\"\n", "f").unwrap_err();
        assert!(e.contains("f: product 1") && e.contains("toaster"), "{e}");
        assert!(parse_products("[[product]]\nid = 1\n", "f").is_err());
    }
}
