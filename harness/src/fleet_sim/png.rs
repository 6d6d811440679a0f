//! The rollout curve as a PNG, drawn here: lines on an RGB raster, text in a 5x7 pixel font
//! defined below (no font file, no font library), encoded as a PNG (zlib by miniz_oxide, CRC
//! by crc32fast). The layout is the SVG's ([`super::curve::Curve::svg`]).

use super::curve::{x_ticks, Curve};

const W: usize = 960;
const H: usize = 540;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas {
            px: vec![255; W * H * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: (u8, u8, u8)) {
        if x < 0 || y < 0 || x >= W as i64 || y >= H as i64 {
            return;
        }
        let i = (y as usize * W + x as usize) * 3;
        self.px[i] = c.0;
        self.px[i + 1] = c.1;
        self.px[i + 2] = c.2;
    }

    /// A line `width` pixels thick; `dash` draws 6 on, 4 off.
    fn line(&mut self, a: (f64, f64), b: (f64, f64), c: (u8, u8, u8), width: i64, dash: bool) {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let steps = dx.abs().max(dy.abs()).ceil().max(1.0) as i64;
        for k in 0..=steps {
            if dash && (k % 10) >= 6 {
                continue;
            }
            let t = k as f64 / steps as f64;
            let (x, y) = (a.0 + dx * t, a.1 + dy * t);
            for ox in 0..width {
                for oy in 0..width {
                    self.set(
                        x.round() as i64 + ox - width / 2,
                        y.round() as i64 + oy - width / 2,
                        c,
                    );
                }
            }
        }
    }

    /// Text with its top-left corner at (x, y), `scale` pixels per font pixel.
    fn text(&mut self, x: f64, y: f64, text: &str, c: (u8, u8, u8), scale: i64) {
        let mut cx = x.round() as i64;
        let cy = y.round() as i64;
        for ch in text.chars() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for sx in 0..scale {
                            for sy in 0..scale {
                                self.set(cx + col * scale + sx, cy + r as i64 * scale + sy, c);
                            }
                        }
                    }
                }
            }
            cx += 6 * scale;
        }
    }

    fn text_width(text: &str, scale: i64) -> f64 {
        (text.chars().count() as i64 * 6 * scale) as f64
    }
}

/// Draws the curve and encodes it.
pub(super) fn draw(curve: &Curve) -> Vec<u8> {
    let mut c = Canvas::new();
    let pw = W as f64 - LEFT - RIGHT;
    let ph = H as f64 - TOP - BOTTOM;
    let end = curve.end().as_secs_f64().max(1.0);
    let (unit, per) = curve.x_unit();
    let x = |t: f64| LEFT + pw * t / end;
    let y = |p: f64| TOP + ph * (1.0 - p / 100.0);
    let black = (0x33, 0x33, 0x33);
    c.text(LEFT, 14.0, &curve.name, (0, 0, 0), 2);
    for k in 0..=4 {
        let p = k as f64 * 25.0;
        c.line(
            (LEFT, y(p)),
            (LEFT + pw, y(p)),
            (0xdd, 0xdd, 0xdd),
            1,
            false,
        );
        let label = format!("{p}%");
        c.text(
            LEFT - 8.0 - Canvas::text_width(&label, 1),
            y(p) - 3.0,
            &label,
            black,
            1,
        );
    }
    for (tick, label) in x_ticks(end, per) {
        c.line(
            (x(tick), TOP),
            (x(tick), TOP + ph),
            (0xee, 0xee, 0xee),
            1,
            false,
        );
        c.text(
            x(tick) - Canvas::text_width(&label, 1) / 2.0,
            TOP + ph + 8.0,
            &label,
            black,
            1,
        );
    }
    for (a, b) in [
        ((LEFT, TOP), (LEFT + pw, TOP)),
        ((LEFT + pw, TOP), (LEFT + pw, TOP + ph)),
        ((LEFT + pw, TOP + ph), (LEFT, TOP + ph)),
        ((LEFT, TOP + ph), (LEFT, TOP)),
    ] {
        c.line(a, b, black, 1, false);
    }
    let xlabel = format!("virtual time ({unit}); seed {}", curve.seed);
    c.text(
        LEFT + pw / 2.0 - Canvas::text_width(&xlabel, 1),
        H as f64 - 26.0,
        &xlabel,
        black,
        2,
    );
    c.text(4.0, TOP - 16.0, "% of devices", black, 1);
    for (i, s) in curve.series().iter().enumerate() {
        let pts: Vec<(f64, f64)> = curve
            .times
            .iter()
            .zip(&s.points)
            .map(|(t, p)| (x(t.as_secs_f64()), y(*p)))
            .collect();
        for w in pts.windows(2) {
            c.line(w[0], w[1], s.colour, 2, s.dashed);
        }
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let lx = LEFT + pw + 16.0;
        c.line((lx, ly), (lx + 24.0, ly), s.colour, 3, s.dashed);
        c.text(lx + 30.0, ly - 3.0, &s.label, black, 1);
    }
    encode(&c.px, W as u32, H as u32)
}

/// An 8-bit RGB PNG of `rgb` (rows top to bottom), filter 0 on every row.
fn encode(rgb: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut raw = Vec::with_capacity(rgb.len() + h as usize);
    for row in rgb.chunks(w as usize * 3) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let idat = miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8 bits, RGB, deflate, filter 0, no interlace
    for (kind, data) in [
        (*b"IHDR", ihdr.as_slice()),
        (*b"IDAT", idat.as_slice()),
        (*b"IEND", &[][..]),
    ] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&kind);
        out.extend_from_slice(data);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&kind);
        crc.update(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    }
    out
}

/// The 5x7 pixel font: seven rows, the high bit of the low five the leftmost pixel.
/// Lowercase letters are drawn as capitals; anything unknown is a small box.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        ' ' => [0; 7],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        ';' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '\'' => [0x0C, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00],
        _ => [0x00, 0x1F, 0x11, 0x11, 0x11, 0x1F, 0x00],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_png_has_a_valid_header_and_chunks() {
        let png = encode(&[255, 0, 0, 0, 255, 0], 2, 1);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 2);
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
        // The IHDR CRC covers type and data.
        let crc = crc32fast::hash(&png[12..29]);
        assert_eq!(u32::from_be_bytes(png[29..33].try_into().unwrap()), crc);
        // The image data inflates back to the filtered rows.
        let len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        let data = miniz_oxide::inflate::decompress_to_vec_zlib(&png[41..41 + len]).unwrap();
        assert_eq!(data, vec![0, 255, 0, 0, 0, 255, 0]);
    }
}
