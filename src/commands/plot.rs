//! `mmr1-fast plot`: draws a run's training curves (`metrics.jsonl`) to a PNG, and when the
//! run logged VPS refreshes (`vps.jsonl`), their distributions and transitions to a second.

use crate::pipeline::metrics::read_metrics_file;
use crate::pipeline::plot::{
    draw, draw_heatmaps, grid, panels, register_font, text_legend, vps_heatmaps,
};
use crate::pipeline::vps_log::read_vps;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// Run directory holding metrics.jsonl (the --out of `train`).
    #[arg(value_name = "OUT_DIR")]
    pub dir: PathBuf,
    /// PNG to write [default: OUT_DIR/curves.png]. With a vps.jsonl in OUT_DIR, the VPS
    /// distribution and transition heatmaps (MMR1 Figure 3) go beside it as NAME-vps.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1600)]
    pub width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 900)]
    pub height: u32,
    /// TrueType/OpenType font for titles and labels [default: a common system sans font].
    #[arg(long, conflicts_with = "no_text")]
    pub font: Option<PathBuf>,
    /// Draw curves only: no titles, labels or tick values (as when no font is found).
    #[arg(long)]
    pub no_text: bool,
}

pub fn run(args: &PlotArgs) -> Result<()> {
    if !args.dir.is_dir() {
        bail!(
            "{} is not a directory (expected a run directory holding metrics.jsonl)",
            args.dir.display()
        );
    }
    let metrics = args.dir.join("metrics.jsonl");
    if !metrics.is_file() {
        bail!(
            "{} not found: is {} a training run's output directory?",
            metrics.display(),
            args.dir.display()
        );
    }
    let out = args.out.clone().unwrap_or_else(|| args.dir.join("curves.png"));
    // The bitmap backend picks the encoder from the extension; only PNG is meant here.
    if !out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        bail!("--out {} must end in .png", out.display());
    }
    for (name, v) in [("--width", args.width), ("--height", args.height)] {
        if !(200..=10_000).contains(&v) {
            bail!("{name} must be between 200 and 10000 pixels (got {v})");
        }
    }

    let file = read_metrics_file(&metrics)?;
    let lines = file.lines;
    if lines == 0 {
        bail!("{} is empty: no steps logged yet", metrics.display());
    }
    if file.not_json == lines {
        bail!(
            "{}: none of its {lines} lines is a JSON object; is it a metrics file?",
            metrics.display()
        );
    }
    let skipped = lines - file.records.len();
    if skipped > 0 {
        // A torn last line after a crash is normal; say so rather than fail.
        eprintln!(
            "note: skipped {skipped} malformed line(s) of {} ({} not JSON, {} not a metrics record this version reads)",
            metrics.display(),
            file.not_json,
            file.unknown
        );
    }
    let panels = panels(&file.records);
    if panels.is_empty() {
        bail!("{}: no SFT, RL or eval steps with values to plot", metrics.display());
    }

    let with_text = if args.no_text {
        false
    } else {
        match register_font(args.font.as_deref())? {
            Ok(_) => true,
            Err(why) => {
                eprintln!("note: labels omitted: {why}; install fonts-dejavu-core or pass --font FILE.ttf");
                false
            }
        }
    };
    if !with_text {
        eprint!("{}", text_legend(&panels));
    }
    draw(&panels, &out, (args.width, args.height), with_text)?;
    let (cols, rows) = grid(panels.len());
    println!("wrote {} ({} panels, {cols}x{rows})", out.display(), panels.len());
    // MMR1's Figure 3 when the run logged VPS refreshes: a second PNG beside the first.
    let vps = args.dir.join("vps.jsonl");
    if vps.is_file() {
        let maps = vps_heatmaps(&read_vps(&vps)?);
        if !maps.is_empty() {
            let vps_out = out.with_file_name(format!(
                "{}-vps.png",
                out.file_stem().map_or("curves".into(), |s| s.to_string_lossy())
            ));
            draw_heatmaps(&maps, &vps_out, (args.width, args.height), with_text)?;
            println!(
                "wrote {} (VPS distribution and {} transition matrices)",
                vps_out.display(),
                maps.len() - 1
            );
        }
    }
    Ok(())
}
