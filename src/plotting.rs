//! The font for plot labels (replay equity plots, quantd-load percentile plots).
//!
//! plotters draws text with `ab_glyph`, which needs a TrueType font registered at run time: the
//! first of `QUANTD_PLOT_FONT` and a few common system paths (Debian's `fonts-dejavu-core`,
//! which `make setup` installs when missing). Control path only.

use std::sync::OnceLock;

const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers the `sans-serif` font once. Fails with what to do when none is found.
pub fn ensure_font() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let paths = std::env::var("QUANTD_PLOT_FONT").into_iter().chain(FONTS.iter().map(|s| s.to_string()));
            for p in paths {
                if let Ok(bytes) = std::fs::read(&p) {
                    // plotters keeps the font for the life of the process.
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    if plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes).is_ok() {
                        return Ok(());
                    }
                }
            }
            Err("no TrueType font for plot labels: install fonts-dejavu-core or set QUANTD_PLOT_FONT to a .ttf".into())
        })
        .clone()
}
