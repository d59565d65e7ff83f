//! Training curves from `metrics.jsonl`: a grid of small panels drawn to a PNG with plotters.
//!
//! plotters is built without font-kit (which links freetype and fontconfig), so text needs a
//! TTF registered at run time; without one the curves are drawn with no text at all, because
//! any text drawn with no font registered fails the whole plot.

use super::metrics::{EvalRecord, Phase, Record, RlStepRecord};
use crate::train::sft::SftStepMetrics;
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// One line (or set of points) of a panel.
pub struct Series {
    pub name: &'static str,
    pub points: Vec<(f64, f64)>,
    /// An interval drawn as a shaded band under the line: (x, low, high); empty for none.
    pub band: Vec<(f64, f64, f64)>,
}

/// One small chart: a title, what x counts, and its series (each in its own color).
pub struct Panel {
    pub title: &'static str,
    pub x_desc: &'static str,
    pub series: Vec<Series>,
    /// Markers instead of lines: evaluations are a few points, not a curve.
    pub points_only: bool,
    /// An x position to mark with a vertical rule (where RL starts on the eval panel).
    pub rule_x: Option<f64>,
}

/// Series colors in order; the text legend names them, so they must stay in step with it.
const COLORS: [(RGBColor, &str); 3] = [
    (RGBColor(31, 119, 180), "blue"),
    (RGBColor(214, 39, 40), "red"),
    (RGBColor(44, 160, 44), "green"),
];

/// Values beyond this are drawn at it: plotters maps points to pixels with arithmetic that
/// overflows near the ends of the f64 range.
const PLOT_LIMIT: f64 = 1e300;

/// A value to draw: finite, clamped to +-PLOT_LIMIT; None for NaN and infinities.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then(|| x.clamp(-PLOT_LIMIT, PLOT_LIMIT))
}

/// A curve over steps: `y` of each record (non-finite values are no point), sorted by step so
/// that lines run left to right even if the log holds steps out of order.
fn curve<T>(
    rs: &[&T],
    name: &'static str,
    step: impl Fn(&T) -> u64,
    y: impl Fn(&T) -> f64,
) -> Series {
    let mut points: Vec<(f64, f64)> =
        rs.iter().filter_map(|r| Some((step(r) as f64, finite(y(r))?))).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    Series { name, points, band: vec![] }
}

/// Builds the panels from metrics records, in display order, leaving out panels with no data.
/// The values are read through the record types' fields (a renamed field fails to compile
/// here rather than silently losing its curve). The initial VAS scoring is not a step and is
/// not drawn.
pub fn panels(records: &[Record]) -> Vec<Panel> {
    let mut sft: Vec<&SftStepMetrics> = vec![];
    let mut rl: Vec<&RlStepRecord> = vec![];
    let mut evals: Vec<&EvalRecord> = vec![];
    for r in records {
        match r {
            Record::Sft(m) => sft.push(m),
            Record::Rl(m) => rl.push(m),
            Record::Eval(m) => evals.push(m),
            Record::InitialScoring(_) => {}
        }
    }
    let sft_curve = |name, y: fn(&SftStepMetrics) -> f64| curve(&sft, name, |m| m.step, y);
    let rl_curve = |name, y: fn(&RlStepRecord) -> f64| curve(&rl, name, |m| m.step, y);

    // Evaluations sit on one run-wide axis: SFT steps, then RL steps after the last SFT step.
    let sft_end = sft
        .iter()
        .map(|m| m.step)
        .chain(evals.iter().filter(|e| e.of == Phase::Sft).map(|e| e.step))
        .max()
        .unwrap_or(0) as f64;
    let eval_x = |e: &EvalRecord| match e.of {
        Phase::Sft => e.step as f64,
        Phase::Rl => sft_end + e.step as f64,
    };
    let eval_series = |name, y: fn(&EvalRecord) -> f64| Series {
        name,
        points: evals.iter().filter_map(|e| Some((eval_x(e), finite(y(e))?))).collect(),
        band: vec![],
    };
    let any_rl_eval = evals.iter().any(|e| e.of == Phase::Rl);

    let line =
        |title, x_desc, series| Panel { title, x_desc, series, points_only: false, rule_x: None };
    let all = vec![
        line("SFT loss", "SFT step", vec![sft_curve("loss", |m| m.loss)]),
        line("SFT learning rate", "SFT step", vec![sft_curve("lr", |m| m.lr as f64)]),
        line(
            "RL reward mean & accuracy",
            "RL step",
            vec![rl_curve("reward_mean", |m| m.reward_mean), rl_curve("accuracy", |m| m.accuracy)],
        ),
        line(
            "RL zero-variance group fraction",
            "RL step",
            vec![rl_curve("zero_var_frac", |m| m.zero_var_frac)],
        ),
        line("RL grad norm", "RL step", vec![rl_curve("grad_norm", |m| m.grad_norm)]),
        line(
            "RL clip fraction & KL",
            "RL step",
            vec![rl_curve("clip_frac", |m| m.clip_frac), rl_curve("kl", |m| m.kl)],
        ),
        Panel {
            title: "Eval accuracy & format",
            x_desc: "step (SFT, then RL)",
            series: vec![
                eval_series("accuracy", |e| e.accuracy),
                eval_series("format", |e| e.format),
            ],
            points_only: true,
            rule_x: (any_rl_eval && sft_end > 0.0).then_some(sft_end),
        },
        line(
            "RL response length (tokens)",
            "RL step",
            vec![rl_curve("response_len", |m| m.response_len)],
        ),
    ];
    all.into_iter()
        .map(|mut p| {
            // A series with no data would still take a color and a legend entry.
            p.series.retain(|s| !s.points.is_empty());
            p
        })
        .filter(|p| !p.series.is_empty())
        .collect()
}

/// MMR1's Figure 2 from an ablation report: one panel per metric, one line per setting
/// (mean over seeds) with its 95% interval as a band.
pub fn ablation_panels(r: &crate::pipeline::ablation::AblationReport) -> Vec<Panel> {
    // Series names are static; the settings are the fixed ablation::LAMBDAS.
    let name = |l: f32| -> &'static str {
        if l == 0.0 {
            "lambda 0 (uniform)"
        } else if l == 0.5 {
            "lambda 0.5 (VAS)"
        } else if l == 1.0 {
            "lambda 1 (VAS)"
        } else {
            "lambda"
        }
    };
    let panel = |metric: &str, title: &'static str| Panel {
        title,
        x_desc: "RL step",
        series: r
            .settings
            .iter()
            .filter_map(|st| {
                let c = st.curves.iter().find(|c| c.metric == metric)?;
                let xs = c.x.iter().map(|&x| x as f64);
                Some(Series {
                    name: name(st.lambda),
                    points: xs.clone().zip(&c.y).map(|(x, iv)| (x, iv.mean)).collect(),
                    band: xs.zip(&c.y).map(|(x, iv)| (x, iv.lo, iv.hi)).collect(),
                })
            })
            .collect(),
        points_only: false,
        rule_x: None,
    };
    vec![
        panel("zero_var_frac", "Zero-variance group fraction"),
        panel("grad_norm", "Gradient norm"),
        panel("clip_frac", "Clip fraction"),
        panel("val_accuracy", "Validation accuracy (greedy)"),
    ]
}

/// Draws [`ablation_panels`] to `out` (text when a font is found).
pub fn draw_ablation(r: &crate::pipeline::ablation::AblationReport, out: &Path) -> Result<()> {
    let text = register_font(None)?.is_ok();
    draw(&ablation_panels(r), out, (1600, 1000), text)
}

/// A grid of cells shaded by a value in [0, 1] (white to blue), with the counts written in
/// the cells when text is drawn: VPS distributions and transition matrices (MMR1 Figure 3).
pub struct Heatmap {
    pub title: String,
    pub x_desc: &'static str,
    pub y_desc: &'static str,
    /// Tick text at the left edge of each column / the bottom of each row.
    pub x_ticks: Vec<String>,
    pub y_ticks: Vec<String>,
    /// `shade[row][col]` in [0, 1]; rows bottom to top.
    pub shade: Vec<Vec<f64>>,
    pub counts: Vec<Vec<usize>>,
}

/// Figure 3 from vps.jsonl: the VPS distribution at each record (columns: records by step,
/// rows: VPS bins, shade: fraction of items), then the transition matrix into each refresh
/// (rows: bin before, columns: bin after, shade: fraction of the row), the last few shown.
pub fn vps_heatmaps(recs: &[crate::pipeline::vps_log::VpsRecord]) -> Vec<Heatmap> {
    let Some(first) = recs.first() else { return vec![] };
    let nb = first.counts.len();
    let bin_ticks: Vec<String> = (0..nb)
        .map(|b| if b + 1 == nb { "unscored".into() } else { short(first.bin_edges[b]) })
        .collect();
    let total = |r: &crate::pipeline::vps_log::VpsRecord| r.counts.iter().sum::<usize>().max(1);
    let mut maps = vec![Heatmap {
        title: "VPS distribution over items at each refresh".into(),
        x_desc: "RL step of the record",
        y_desc: "VPS bin",
        x_ticks: recs.iter().map(|r| r.step.to_string()).collect(),
        y_ticks: bin_ticks.clone(),
        shade: (0..nb)
            .map(|b| recs.iter().map(|r| r.counts[b] as f64 / total(r) as f64).collect())
            .collect(),
        counts: (0..nb).map(|b| recs.iter().map(|r| r.counts[b]).collect()).collect(),
    }];
    // The first record's transitions are all from "unscored": nothing to show.
    let transitions: Vec<_> = recs.iter().skip(1).collect();
    for r in transitions.iter().skip(transitions.len().saturating_sub(7)) {
        let prev_step = recs
            .iter()
            .take_while(|q| q.step < r.step)
            .last()
            .map_or("start".to_string(), |q| q.step.to_string());
        maps.push(Heatmap {
            title: format!("VPS bin transitions, step {prev_step} -> {}", r.step),
            x_desc: "bin after",
            y_desc: "bin before",
            x_ticks: bin_ticks.clone(),
            y_ticks: bin_ticks.clone(),
            shade: r
                .transition
                .iter()
                .map(|row| {
                    let n = row.iter().sum::<usize>().max(1) as f64;
                    row.iter().map(|&c| c as f64 / n).collect()
                })
                .collect(),
            counts: r.transition.clone(),
        });
    }
    maps
}

/// Draws heatmaps in a grid to a PNG at `out` (see [`draw`] for `text`).
pub fn draw_heatmaps(maps: &[Heatmap], out: &Path, size: (u32, u32), text: bool) -> Result<()> {
    let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", out.display());
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (cols, rows) = grid(maps.len());
        let areas = root.split_evenly((rows, cols));
        let (pw, ph) = (size.0 as f64 / cols as f64, size.1 as f64 / rows as f64);
        let scale = (pw / 400.0).min(ph / 450.0).clamp(0.5, 1.5);
        for (m, area) in maps.iter().zip(&areas) {
            draw_heatmap(area, m, text, scale).map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    write_png(out, size, &rgb)
}

fn draw_heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    m: &Heatmap,
    text: bool,
    scale: f64,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (nx, ny) = (m.x_ticks.len().max(1), m.y_ticks.len().max(1));
    let px = |n: f64| (n * scale).round() as u32;
    let mut b = ChartBuilder::on(area);
    b.margin(px(8.0));
    if text {
        b.caption(&m.title, ("sans-serif", px(14.0)))
            .x_label_area_size(px(40.0).max(26))
            .y_label_area_size(px(60.0).max(34));
    }
    let mut chart = b.build_cartesian_2d(0.0..nx as f64, 0.0..ny as f64)?;
    let tick_of = |ticks: &[String], v: f64| -> String {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 {
            ticks.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let xf = |v: &f64| tick_of(&m.x_ticks, *v);
    let yf = |v: &f64| tick_of(&m.y_ticks, *v);
    let mut mesh = chart.configure_mesh();
    mesh.disable_mesh().x_labels(nx + 1).y_labels(ny + 1);
    if text {
        mesh.x_desc(m.x_desc).y_desc(m.y_desc).x_label_formatter(&xf).y_label_formatter(&yf);
        mesh.label_style(("sans-serif", px(10.0))).axis_desc_style(("sans-serif", px(11.0)));
    }
    mesh.draw()?;
    for (r, row) in m.shade.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
            // White (0) to the first series color (1).
            let mixc = |w: u8, t: u8| (w as f64 + (t as f64 - w as f64) * v).round() as u8;
            let color = RGBColor(mixc(255, 31), mixc(255, 119), mixc(255, 180));
            let (x, y) = (c as f64, r as f64);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x, y), (x + 1.0, y + 1.0)],
                color.filled(),
            )))?;
            let n = m.counts.get(r).and_then(|row| row.get(c)).copied().unwrap_or(0);
            if text && n > 0 && nx <= 12 {
                let ink = if v > 0.5 { WHITE } else { BLACK };
                chart.draw_series(std::iter::once(Text::new(
                    n.to_string(),
                    (x + 0.3, y + 0.7),
                    ("sans-serif", px(9.0)).into_font().color(&ink),
                )))?;
            }
        }
    }
    Ok(())
}

/// Columns and rows for `n` panels: wider than tall, like the default image.
pub fn grid(n: usize) -> (usize, usize) {
    let cols = match n {
        0..=2 => n.max(1),
        3..=4 => 2,
        5..=6 => 3,
        _ => 4,
    };
    (cols, n.div_ceil(cols))
}

/// Registers a sans-serif TTF for plot text: `explicit` if given (its failure is an error),
/// else the first usable of a few common system paths and `fc-match sans`. Returns the font's
/// path, or (inner Err) why none was found, for the user.
pub fn register_font(explicit: Option<&Path>) -> Result<std::result::Result<PathBuf, String>> {
    if let Some(p) = explicit {
        let bytes =
            std::fs::read(p).with_context(|| format!("cannot read font {}", p.display()))?;
        return match register(bytes) {
            true => Ok(Ok(p.to_path_buf())),
            false => bail!("{} is not a TrueType/OpenType font plotters can use", p.display()),
        };
    }
    const COMMON: &[&str] = &[
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
        "/usr/share/fonts/noto/NotoSans-Regular.ttf",
        "/System/Library/Fonts/Supplemental/Arial.ttf",
        "/Library/Fonts/Arial.ttf",
        "C:\\Windows\\Fonts\\arial.ttf",
    ];
    let mut candidates: Vec<PathBuf> = COMMON.iter().map(PathBuf::from).collect();
    // fc-match knows fonts in places the list misses; it is optional, so failure is silent.
    let fc = std::process::Command::new("fc-match").args(["-f", "%{file}", "sans"]).output();
    if let Some(o) = fc.as_ref().ok().filter(|o| o.status.success()) {
        let f = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if !f.is_empty() {
            candidates.push(PathBuf::from(f));
        }
    }
    for p in &candidates {
        if let Ok(bytes) = std::fs::read(p) {
            if register(bytes) {
                return Ok(Ok(p.clone()));
            }
        }
    }
    let fc_note =
        if fc.is_ok() { "fc-match found none usable" } else { "fc-match is not installed" };
    Ok(Err(format!(
        "no TTF font in the usual places ({} paths such as {}) and {fc_note}",
        COMMON.len(),
        COMMON[0]
    )))
}

/// Registers font bytes as plotters' "sans-serif"; false if they do not parse.
fn register(bytes: Vec<u8>) -> bool {
    // plotters keeps fonts for the process's life and wants &'static; one font per run.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
}

/// The text legend for a plot drawn without text: panels in drawing order with series colors.
pub fn text_legend(panels: &[Panel]) -> String {
    let (cols, _) = grid(panels.len());
    let mut s = format!("panels, left to right then top to bottom ({cols} per row):\n");
    for (i, p) in panels.iter().enumerate() {
        let series: Vec<String> = p
            .series
            .iter()
            .zip(COLORS.iter().cycle())
            .map(|(s, (_, c))| format!("{} {c}", s.name))
            .collect();
        s.push_str(&format!("  {}. {} (x: {}): {}\n", i + 1, p.title, p.x_desc, series.join(", ")));
    }
    s
}

/// Draws `panels` to a PNG at `out`, `size` pixels; `text` false draws no text at all.
pub fn draw(panels: &[Panel], out: &Path, size: (u32, u32), text: bool) -> Result<()> {
    // Drawn in memory and written whole at the end: plotters' file backend saves whatever it
    // holds when dropped, so a failed draw would leave a half-drawn PNG behind.
    let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", out.display());
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (cols, rows) = grid(panels.len());
        let areas = root.split_evenly((rows, cols));
        // Text sized for the default 400x450 panels, shrunk with smaller ones so titles fit.
        let (pw, ph) = (size.0 as f64 / cols as f64, size.1 as f64 / rows as f64);
        let scale = (pw / 400.0).min(ph / 450.0).clamp(0.5, 1.5);
        for (p, area) in panels.iter().zip(&areas) {
            draw_panel(area, p, text, scale).map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    write_png(out, size, &rgb)
}

/// Encodes an RGB buffer as PNG and writes it atomically.
fn write_png(out: &Path, size: (u32, u32), rgb: &[u8]) -> Result<()> {
    let mut png_bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut png_bytes, size.0, size.1);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    // Flat colors and thin lines: adaptive filtering with strong deflate makes the file
    // several times smaller for little time.
    enc.set_compression(png::Compression::Best);
    enc.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    enc.write_header().and_then(|mut w| w.write_image_data(rgb)).context("encoding PNG")?;
    crate::fs::write_atomic(out, &png_bytes)
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    text: bool,
    scale: f64,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let all = p.series.iter().flat_map(|s| &s.points);
    let bands = p.series.iter().flat_map(|s| &s.band);
    // Lines fill the x range; markers need room at the ends to be seen whole.
    let (x0, x1) = pad(all.clone().map(|q| q.0), if p.points_only { 0.04 } else { 0.0 });
    let ys = all.map(|q| q.1).chain(bands.flat_map(|b| [b.1, b.2])).filter(|y| y.is_finite());
    let (y0, y1) = pad(ys, 0.05);

    let px = |n: f64| (n * scale).round() as u32;
    let mut b = ChartBuilder::on(area);
    b.margin(px(8.0));
    if text {
        // Tick marks and gaps do not shrink with the text, so the label areas keep a floor.
        b.caption(p.title, ("sans-serif", px(16.0)))
            .x_label_area_size(px(32.0).max(26))
            .y_label_area_size(px(52.0).max(34));
    }
    let mut chart = b.build_cartesian_2d(x0..x1, y0..y1)?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(RGBColor(235, 235, 235)).x_labels(6).y_labels(5);
    if text {
        mesh.x_desc(p.x_desc).y_label_formatter(&tick).x_label_formatter(&tick);
        mesh.label_style(("sans-serif", px(11.0))).axis_desc_style(("sans-serif", px(12.0)));
    }
    mesh.draw()?;
    if !text {
        // No axes are drawn without label areas; a frame keeps panels apart.
        let (xr, yr) = (chart.x_range(), chart.y_range());
        chart.draw_series(std::iter::once(Rectangle::new(
            [(xr.start, yr.start), (xr.end, yr.end)],
            RGBColor(150, 150, 150).stroke_width(1),
        )))?;
    }
    if let Some(x) = p.rule_x {
        chart.draw_series(LineSeries::new([(x, y0), (x, y1)], RGBColor(160, 160, 160)))?;
    }
    // Bands first, translucent, so every line stays visible over them.
    for (s, (color, _)) in p.series.iter().zip(COLORS.iter().cycle()) {
        if s.band.len() >= 2 {
            let mut outline: Vec<(f64, f64)> = s.band.iter().map(|b| (b.0, b.2)).collect();
            outline.extend(s.band.iter().rev().map(|b| (b.0, b.1)));
            chart.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.18).filled())))?;
        }
    }
    for (i, (s, (color, _))) in p.series.iter().zip(COLORS.iter().cycle()).enumerate() {
        let color = *color;
        // Series often coincide (reward mean = accuracy when no format is earned): the first
        // is drawn wider and larger so it still shows around the ones drawn over it.
        let (width, radius) = if i == 0 && p.series.len() > 1 { (4, 5) } else { (2, 4) };
        let drawn = if p.points_only {
            chart.draw_series(s.points.iter().map(|&q| Circle::new(q, radius, color.filled())))?
        } else {
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(width)))?
        };
        if text && p.series.len() > 1 {
            if p.points_only {
                drawn
                    .label(s.name)
                    .legend(move |(x, y)| Circle::new((x + 8, y), radius, color.filled()));
            } else {
                drawn.label(s.name).legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(width))
                });
            }
        }
    }
    if text && p.series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(RGBColor(200, 200, 200))
            .label_font(("sans-serif", px(11.0)))
            .draw()?;
    }
    Ok(())
}

/// A value range with `frac` of its span added at both ends, never empty.
///
/// Values are clamped to +-PLOT_LIMIT and a span too small to split into ticks (relative to the
/// values) counts as one value: plotters' tick search never ends on an infinite or
/// denormal-sized range, and a metric may hold anything from 1e-308 to 1e308.
fn pad(vals: impl Iterator<Item = f64>, frac: f64) -> (f64, f64) {
    let (lo, hi) = vals
        .map(|v| v.clamp(-PLOT_LIMIT, PLOT_LIMIT))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi || lo.is_nan() || hi.is_nan() {
        return (0.0, 1.0);
    }
    let scale = lo.abs().max(hi.abs());
    if hi - lo > scale * 1e-9 && hi - lo > 1e-200 {
        let d = (hi - lo) * frac;
        (lo - d, hi + d)
    } else {
        // One value (or one step): centre it in a range that is visible at its scale.
        let d = if lo.abs() > 1e-200 { lo.abs() * 0.1 } else { 1.0 };
        (lo - d, lo + d)
    }
}

fn tick(v: &f64) -> String {
    short(*v)
}

/// Tick text: 3 significant digits, scientific where plain decimals get long (learning rates).
fn short(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else {
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{v:.decimals$}");
        // "0.150" reads as "0.15"; the digits kept are the significant ones.
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn panels_skip_empty_and_place_evals_on_one_axis() {
        let lines = [
            json!({"phase": "sft", "step": 1, "loss": 2.0, "lr": 0.0}),
            json!({"phase": "sft", "step": 4, "loss": 1.0, "lr": 1e-4}),
            json!({"event": "initial_scoring", "phase": "rl", "step": 0}),
            json!({"phase": "eval", "of": "sft", "step": 4, "label": "after SFT", "accuracy": 0.2, "format": 0.0}),
            json!({"phase": "eval", "of": "rl", "step": 3, "label": "periodic", "accuracy": 0.5, "format": null}),
        ];
        let recs: Vec<Record> = lines.iter().map(|v| Record::from_json(v).unwrap()).collect();
        let ps = panels(&recs);
        let titles: Vec<_> = ps.iter().map(|p| p.title).collect();
        assert_eq!(titles, ["SFT loss", "SFT learning rate", "Eval accuracy & format"]);
        let eval = &ps[2];
        assert_eq!(eval.series[0].points, [(4.0, 0.2), (7.0, 0.5)]);
        assert_eq!(eval.series[1].points, [(4.0, 0.0)], "null format is no point");
        assert_eq!(eval.rule_x, Some(4.0));
    }

    #[test]
    fn vps_heatmaps_show_distributions_and_row_normalized_transitions() {
        use crate::pipeline::vps_log::{item_bins, vps_record};
        use crate::rl::vas::VpsTable;
        let mut t = VpsTable::new(4);
        let r: Vec<&[u32]> = vec![&[1, 2, 3, 4, 5]; 4];
        let mut recs = vec![];
        let b0 = item_bins(&t);
        t.refresh(0, &[1.0, 0.0, 0.0, 0.0], &r, 0);
        t.refresh(1, &[1.0; 4], &r, 0);
        recs.push(vps_record(&t, &b0, 0, "initial_scoring"));
        let b1 = item_bins(&t);
        t.refresh(1, &[1.0, 1.0, 0.0, 0.0], &r, 5);
        recs.push(vps_record(&t, &b1, 5, "refresh"));
        let maps = vps_heatmaps(&recs);
        assert_eq!(maps.len(), 2, "the distribution, then one transition matrix");
        let d = &maps[0];
        assert_eq!((d.x_ticks.len(), d.y_ticks.len()), (2, recs[0].counts.len()));
        for col in 0..2 {
            let s: f64 = d.shade.iter().map(|row| row[col]).sum();
            assert!((s - 1.0).abs() < 1e-12, "each record's fractions sum to 1");
        }
        assert_eq!(d.y_ticks.last().unwrap(), "unscored");
        let m = &maps[1];
        assert!(m.title.contains("0 -> 5"), "{}", m.title);
        for (row, counts) in m.shade.iter().zip(&m.counts) {
            let s: f64 = row.iter().sum();
            let n: usize = counts.iter().sum();
            assert!(if n == 0 { s == 0.0 } else { (s - 1.0).abs() < 1e-12 });
        }
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("vps.png");
        draw_heatmaps(&maps, &png, (600, 300), false).unwrap();
        assert!(std::fs::metadata(&png).unwrap().len() > 100);
    }

    #[test]
    fn grid_and_ticks() {
        assert_eq!(grid(1), (1, 1));
        assert_eq!(grid(3), (2, 2));
        assert_eq!(grid(8), (4, 2));
        assert_eq!(short(0.15), "0.15");
        assert_eq!(short(123.456), "123");
        assert_eq!(short(0.0001875), "1.9e-4");
        assert_eq!(short(-2.5), "-2.5");
        assert_eq!(pad([3.0].into_iter(), 0.05), (2.7, 3.3));
    }
}
