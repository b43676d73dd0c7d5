//! `e2e-chart`: draws the bar chart of an end-to-end benchmark run.
//!
//! ```text
//! e2e-chart RESULTS.json CHART.png [--font FILE.ttf]
//! ```
//!
//! Reads the `results.json` written by `scripts/bench-e2e` and draws one PNG
//! with two panels, one row per variant: TCP throughput (one stream and four
//! streams, Gbit/s) and UDP 64-byte packets delivered per second. Text is
//! rendered in pure Rust from a TrueType file read at run time (DejaVu Sans
//! by default), so no fontconfig or freetype is needed.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde_json::Value;

/// Fonts tried in order when `--font` is not given.
const DEFAULT_FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// The family name the font is registered under for plotters.
const FAMILY: &str = "sans-serif";

#[derive(Debug, thiserror::Error)]
enum ChartError {
    #[error("usage: e2e-chart RESULTS.json CHART.png [--font FILE.ttf] ({0})")]
    Usage(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: `{key}` is {found}; expected {expected}")]
    Shape {
        path: PathBuf,
        key: String,
        found: String,
        expected: &'static str,
    },
    #[error("no font: none of {tried:?} exists; pass --font FILE.ttf")]
    NoFont { tried: Vec<String> },
    #[error("font {path} is not a TrueType/OpenType font the renderer accepts")]
    BadFont { path: PathBuf },
    #[error("drawing {path}: {message}")]
    Draw { path: PathBuf, message: String },
}

/// One row of the chart.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    name: String,
    kind: Kind,
    tcp1_gbps: Option<f64>,
    tcp4_gbps: Option<f64>,
    udp64_kpps: Option<f64>,
    udpgen_kpps: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ceiling,
    Kernel,
    Sluice,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        match s {
            "ceiling" => Some(Kind::Ceiling),
            "kernel" => Some(Kind::Kernel),
            "sluice" => Some(Kind::Sluice),
            _ => None,
        }
    }

    /// Colours of the first and second bar of a row.
    fn colours(self) -> (RGBColor, RGBColor) {
        match self {
            Kind::Ceiling => (RGBColor(110, 110, 110), RGBColor(170, 170, 170)),
            Kind::Kernel => (RGBColor(49, 104, 176), RGBColor(128, 170, 222)),
            Kind::Sluice => (RGBColor(222, 110, 26), RGBColor(245, 172, 110)),
        }
    }
}

/// What the chart needs from `results.json`.
#[derive(Debug, Clone, PartialEq)]
struct Chart {
    title: String,
    subtitle: String,
    rows: Vec<Row>,
}

fn shape(path: &Path, key: &str, found: &Value, expected: &'static str) -> ChartError {
    let mut found = found.to_string();
    found.truncate(80);
    ChartError::Shape {
        path: path.to_owned(),
        key: key.to_owned(),
        found,
        expected,
    }
}

/// A metric: a number, or null for a measurement that failed.
fn metric(path: &Path, name: &str, median: &Value, key: &str) -> Result<Option<f64>, ChartError> {
    match median.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(Some)
            .ok_or_else(|| {
                shape(
                    path,
                    &format!("variants[{name}].median.{key}"),
                    v,
                    "a non-negative number or null",
                )
            }),
    }
}

fn parse(path: &Path, text: &str) -> Result<Chart, ChartError> {
    let v: Value = serde_json::from_str(text).map_err(|source| ChartError::Json {
        path: path.to_owned(),
        source,
    })?;
    let meta = &v["meta"];
    let profile = meta["profile"].as_str().unwrap_or("?");
    let title = format!("Sluice vs kernel datapath: pod to pod across two nodes ({profile} run)");
    let subtitle = format!(
        "{} | {} CPUs | kernel {} | median of {} x {} s | pinning: {}",
        meta["date"].as_str().unwrap_or("?"),
        meta["cpus"].as_u64().unwrap_or(0),
        meta["kernel"].as_str().unwrap_or("?"),
        meta["reps"].as_u64().unwrap_or(0),
        meta["duration_s"].as_f64().unwrap_or(0.0),
        meta["pinning"].as_str().unwrap_or("?"),
    );
    let variants = v["variants"]
        .as_array()
        .ok_or_else(|| shape(path, "variants", &v["variants"], "an array"))?;
    let mut rows = Vec::with_capacity(variants.len());
    for (i, var) in variants.iter().enumerate() {
        let name = var["name"]
            .as_str()
            .ok_or_else(|| {
                shape(
                    path,
                    &format!("variants[{i}].name"),
                    &var["name"],
                    "a string",
                )
            })?
            .to_owned();
        let kind = var["kind"].as_str().and_then(Kind::parse).ok_or_else(|| {
            shape(
                path,
                &format!("variants[{name}].kind"),
                &var["kind"],
                "\"ceiling\", \"kernel\" or \"sluice\"",
            )
        })?;
        let median = &var["median"];
        rows.push(Row {
            kind,
            tcp1_gbps: metric(path, &name, median, "tcp1_gbps")?,
            tcp4_gbps: metric(path, &name, median, "tcp4_gbps")?,
            udp64_kpps: metric(path, &name, median, "udp64_kpps")?,
            udpgen_kpps: metric(path, &name, median, "udpgen_kpps")?,
            name,
        });
    }
    if rows.is_empty() {
        return Err(shape(
            path,
            "variants",
            &v["variants"],
            "at least one variant",
        ));
    }
    Ok(Chart {
        title,
        subtitle,
        rows,
    })
}

/// Reads the font and registers it for the whole process.
fn load_font(given: Option<PathBuf>) -> Result<(), ChartError> {
    let path = match given {
        Some(p) => p,
        None => DEFAULT_FONTS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| ChartError::NoFont {
                tried: DEFAULT_FONTS.iter().map(|s| (*s).to_owned()).collect(),
            })?,
    };
    let bytes = std::fs::read(&path).map_err(|source| ChartError::Read {
        path: path.clone(),
        source,
    })?;
    // The renderer keeps fonts for the life of the process; this binary draws
    // one chart and exits, so leaking the bytes once is the simple way there.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| ChartError::BadFont { path })
}

/// One horizontal bar panel: a row per variant, up to two bars per row.
struct Panel<'a> {
    caption: &'a str,
    axis: &'a str,
    /// Values per row: (first bar, second bar), either may be missing.
    values: Vec<(Option<f64>, Option<f64>)>,
    legend: (&'a str, Option<&'a str>),
    decimals: usize,
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    rows: &[Row],
    p: &Panel<'_>,
) -> Result<(), String> {
    let n = rows.len();
    let max = p
        .values
        .iter()
        .flat_map(|(a, b)| [*a, *b])
        .flatten()
        .fold(0.0_f64, f64::max);
    let x_max = if max > 0.0 { max * 1.22 } else { 1.0 };
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    // Rows are drawn top-down in the order of results.json: row i sits at
    // segment n-1-i.
    let label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(s) if *s < n => names[n - 1 - *s].to_owned(),
        _ => String::new(),
    };
    let x_label = |v: &f64| {
        if x_max >= 5.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    };
    // The coordinate range 0..n is inclusive, so segment n is an empty row at
    // the top: the legend sits there.
    let mut chart = ChartBuilder::on(area)
        .caption(p.caption, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(190)
        .build_cartesian_2d(0.0..x_max, (0..n).into_segmented())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&label)
        .x_label_formatter(&x_label)
        .x_max_light_lines(2)
        .x_desc(p.axis)
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 15))
        .draw()
        .map_err(|e| e.to_string())?;

    let plot_h = chart.plotting_area().dim_in_pixel().1;
    let seg = (plot_h / n.max(1) as u32).max(4);
    let pad = seg / 8;
    let two = p.legend.1.is_some();
    let half = (seg - 2 * pad) / 2;
    for (i, row) in rows.iter().enumerate() {
        let s = n - 1 - i;
        let (c1, c2) = row.kind.colours();
        let bars: [(Option<f64>, RGBColor, u32, u32); 2] = if two {
            [
                (p.values[i].0, c1, pad, pad + half),
                (p.values[i].1, c2, pad + half, pad),
            ]
        } else {
            [(p.values[i].0, c1, pad, pad), (None, c2, 0, 0)]
        };
        let mut any = false;
        for (v, colour, top, bottom) in bars {
            let Some(v) = v else { continue };
            any = true;
            let mut r = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(s)),
                    (v, SegmentValue::Exact(s + 1)),
                ],
                colour.filled(),
            );
            r.set_margin(top, bottom, 0, 0);
            chart
                .draw_series(std::iter::once(r))
                .map_err(|e| e.to_string())?;
            // The value just past the bar's end, centred on the bar.
            let y_px = (top as i32 - bottom as i32) / 2 - 8;
            let text = EmptyElement::at((v, SegmentValue::CenterOf(s)))
                + Text::new(
                    format!("{v:.*}", p.decimals),
                    (6, y_px),
                    (FAMILY, 14).into_font(),
                );
            chart
                .draw_series(std::iter::once(text))
                .map_err(|e| e.to_string())?;
        }
        if !any {
            let text = EmptyElement::at((0.0, SegmentValue::CenterOf(s)))
                + Text::new(
                    "no result (see results.md)",
                    (6, -8),
                    (FAMILY, 14).into_font().color(&RED),
                );
            chart
                .draw_series(std::iter::once(text))
                .map_err(|e| e.to_string())?;
        }
    }

    // Legend: shade swatches for the two bars, drawn in the panel's corner.
    let (w, _) = area.dim_in_pixel();
    let mut x = w as i32 - 330;
    let y = 40;
    let entries: Vec<(&str, usize)> = match p.legend.1 {
        Some(second) => vec![(p.legend.0, 0), (second, 1)],
        None => vec![(p.legend.0, 0)],
    };
    for (text, shade) in entries {
        let c = if shade == 0 {
            RGBColor(90, 90, 90)
        } else {
            RGBColor(185, 185, 185)
        };
        area.draw(&Rectangle::new([(x, y), (x + 16, y + 14)], c.filled()))
            .map_err(|e| e.to_string())?;
        area.draw(&Text::new(
            text.to_owned(),
            (x + 22, y - 1),
            (FAMILY, 14).into_font(),
        ))
        .map_err(|e| e.to_string())?;
        x += 160;
    }
    Ok(())
}

fn draw(chart: &Chart, out: &Path) -> Result<(), String> {
    let n = chart.rows.len() as u32;
    let height = 150 + 2 * (70 + 46 * n);
    let root = BitMapBackend::new(out, (1400, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    root.draw(&Text::new(
        chart.title.clone(),
        (20, 14),
        (FAMILY, 26).into_font(),
    ))
    .map_err(|e| e.to_string())?;
    root.draw(&Text::new(
        chart.subtitle.clone(),
        (20, 50),
        (FAMILY, 15).into_font().color(&RGBColor(80, 80, 80)),
    ))
    .map_err(|e| e.to_string())?;
    let key = "grey: veth ceiling   blue: Linux kernel datapath   orange: Sluice";
    root.draw(&Text::new(
        key,
        (20, 74),
        (FAMILY, 15).into_font().color(&RGBColor(80, 80, 80)),
    ))
    .map_err(|e| e.to_string())?;
    let body = root.margin(100, 0, 0, 0);
    let panels = body.split_evenly((2, 1));
    let tcp = Panel {
        caption: "TCP throughput (iperf3)",
        axis: "Gbit/s",
        values: chart
            .rows
            .iter()
            .map(|r| (r.tcp1_gbps, r.tcp4_gbps))
            .collect(),
        legend: ("1 stream", Some("4 streams")),
        decimals: 2,
    };
    let udp = Panel {
        caption: "UDP, 64-byte payloads delivered (receiver count)",
        axis: "thousand packets per second",
        values: chart
            .rows
            .iter()
            .map(|r| (r.udp64_kpps, r.udpgen_kpps))
            .collect(),
        legend: ("iperf3 -u -l 64 -b 0", Some("sendmmsg generator")),
        decimals: 0,
    };
    draw_panel(&panels[0], &chart.rows, &tcp)?;
    draw_panel(&panels[1], &chart.rows, &udp)?;
    root.present().map_err(|e| e.to_string())
}

fn run(args: Vec<String>) -> Result<(), ChartError> {
    let mut positional = Vec::new();
    let mut font = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--font" => {
                font =
                    Some(PathBuf::from(it.next().ok_or_else(|| {
                        ChartError::Usage("--font needs a file".into())
                    })?))
            }
            "-h" | "--help" => return Err(ChartError::Usage("help".into())),
            s if s.starts_with('-') => {
                return Err(ChartError::Usage(format!("unknown option {s}")))
            }
            _ => positional.push(PathBuf::from(a)),
        }
    }
    let [input, output]: [PathBuf; 2] = positional.try_into().map_err(|p: Vec<PathBuf>| {
        ChartError::Usage(format!("expected 2 paths, got {}", p.len()))
    })?;
    let text = std::fs::read_to_string(&input).map_err(|source| ChartError::Read {
        path: input.clone(),
        source,
    })?;
    let chart = parse(&input, &text)?;
    load_font(font)?;
    draw(&chart, &output).map_err(|message| ChartError::Draw {
        path: output,
        message,
    })
}

fn main() -> std::process::ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e-chart: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "meta": {"profile": "quick", "date": "2026-11-28", "cpus": 2, "kernel": "6.18", "reps": 1,
               "duration_s": 2, "pinning": "dedicated"},
      "variants": [
        {"name": "veth", "kind": "ceiling", "median": {"tcp1_gbps": 12.3, "tcp4_gbps": 13.0, "udp64_kpps": 518}},
        {"name": "sluice-vxlan-socket", "kind": "sluice", "median": {"tcp1_gbps": null, "udp64_kpps": 100.5, "udpgen_kpps": 128.0}}
      ]
    }"#;

    #[test]
    fn parses_rows_and_missing_metrics() {
        let c = parse(Path::new("r.json"), SAMPLE).unwrap();
        assert_eq!(c.rows.len(), 2);
        assert_eq!(c.rows[0].kind, Kind::Ceiling);
        assert_eq!(c.rows[0].tcp4_gbps, Some(13.0));
        assert_eq!(c.rows[1].tcp1_gbps, None);
        assert_eq!(c.rows[1].tcp4_gbps, None);
        assert_eq!(c.rows[1].udp64_kpps, Some(100.5));
        assert_eq!(c.rows[0].udpgen_kpps, None);
        assert_eq!(c.rows[1].udpgen_kpps, Some(128.0));
        assert!(c.subtitle.contains("median of 1 x 2 s"), "{}", c.subtitle);
    }

    #[test]
    fn rejects_bad_shapes_naming_the_key() {
        let e = parse(Path::new("r.json"), r#"{"variants": 3}"#).unwrap_err();
        assert!(
            e.to_string().contains("`variants` is 3; expected an array"),
            "{e}"
        );
        let e = parse(
            Path::new("r.json"),
            r#"{"variants": [{"name": "x", "kind": "vpp"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("variants[x].kind"), "{e}");
        let e = parse(
            Path::new("r.json"),
            r#"{"variants": [{"name": "x", "kind": "kernel", "median": {"tcp1_gbps": "fast"}}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("median.tcp1_gbps"), "{e}");
        assert!(matches!(
            parse(Path::new("r.json"), "{"),
            Err(ChartError::Json { .. })
        ));
        assert!(parse(Path::new("r.json"), r#"{"variants": []}"#).is_err());
    }

    #[test]
    fn draws_a_png() {
        if !DEFAULT_FONTS.iter().any(|p| Path::new(p).exists()) {
            eprintln!("skipping: no default font installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("e2e-chart-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("results.json");
        std::fs::write(&input, SAMPLE).unwrap();
        let out = dir.join("chart.png");
        run(vec![input.display().to_string(), out.display().to_string()]).unwrap();
        let png = std::fs::read(&out).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn usage_errors() {
        assert!(matches!(run(vec![]), Err(ChartError::Usage(_))));
        assert!(matches!(
            run(vec!["--bogus".into()]),
            Err(ChartError::Usage(_))
        ));
        assert!(matches!(
            run(vec!["a".into(), "b".into(), "--font".into()]),
            Err(ChartError::Usage(_))
        ));
    }
}
