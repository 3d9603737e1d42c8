//! Draws the time-to-prompt distributions of a `scripts/bench.sh` run as an SVG: one panel per concurrency
//! (c=1, c=10), one curve per variant (the Docker floor, berth cold, berth pooled), each the share of sessions
//! (y) whose first prompt came within a time (x, log scale).
//!
//! ```text
//! cargo run --example ttp_plot -- RESULTS.jsonl OUT.svg
//! ```
//!
//! RESULTS.jsonl holds the JSON lines the load tools print with `--samples`; `scripts/bench.sh` adds a `variant`
//! field to each (`floor`, `cold`, `pooled`). Lines of other modes, or without samples, are skipped.

use std::collections::BTreeMap;
use std::process::ExitCode;

use plotters::prelude::*;
use serde_json::Value;

/// The variants in drawing order, with their colours and legend names.
const VARIANTS: [(&str, RGBColor, &str); 3] = [
    ("floor", RGBColor(90, 90, 90), "Docker floor (same container spec)"),
    ("cold", RGBColor(31, 119, 180), "berth, cold start"),
    ("pooled", RGBColor(214, 39, 40), "berth, warm pool"),
];

/// The panels: latency runs at these concurrencies.
const PANELS: [u64; 2] = [1, 10];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [results, out] = args.as_slice() else {
        eprintln!("usage: ttp_plot RESULTS.jsonl OUT.svg");
        return ExitCode::from(64);
    };
    let text = match std::fs::read_to_string(results) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ttp_plot: {results}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let series = read_series(&text);
    if series.is_empty() {
        eprintln!("ttp_plot: {results}: no latency line with time_to_prompt_samples_ms");
        return ExitCode::FAILURE;
    }
    match draw(&series, out) {
        Ok(()) => {
            for ((c, variant), ms) in &series {
                eprintln!("ttp_plot: c={c} {variant}: {} samples", ms.len());
            }
            eprintln!("ttp_plot: wrote {out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ttp_plot: {out}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Samples by (concurrency, variant), sorted ascending.
fn read_series(text: &str) -> BTreeMap<(u64, String), Vec<f64>> {
    let mut out: BTreeMap<(u64, String), Vec<f64>> = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        if v["mode"] != "latency" {
            continue;
        }
        let (Some(c), Some(samples)) = (v["concurrency"].as_u64(), v["time_to_prompt_samples_ms"].as_array()) else {
            continue;
        };
        let variant = v["variant"].as_str().or_else(|| v["target"].as_str()).unwrap_or("unknown").to_owned();
        out.entry((c, variant)).or_default().extend(samples.iter().filter_map(Value::as_f64));
    }
    for ms in out.values_mut() {
        ms.sort_by(f64::total_cmp);
    }
    out
}

fn draw(series: &BTreeMap<(u64, String), Vec<f64>>, out: &str) -> Result<(), Box<dyn std::error::Error>> {
    let all = series.values().flatten().copied();
    let (lo, hi) = all.fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    // Whole decades around the data, so the log axis reads in 1, 10, 100, 1000 ms.
    let x_lo = 10f64.powf(lo.max(0.1).log10().floor());
    let x_hi = 10f64.powf(hi.max(1.0).log10().ceil());

    let root = SVGBackend::new(out, (980, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled("berth: time to first prompt (share of sessions within x ms)", ("sans-serif", 20))?;
    let panels = root.split_evenly((1, PANELS.len()));
    for (area, c) in panels.iter().zip(PANELS) {
        let mut chart = ChartBuilder::on(area)
            .caption(format!("c={c}"), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d((x_lo..x_hi).log_scale(), 0f64..1f64)?;
        chart
            .configure_mesh()
            .x_desc("time to prompt (ms, log scale)")
            .y_desc("share of sessions")
            .x_label_formatter(&|x| format!("{x}"))
            .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
            .draw()?;
        for (variant, colour, name) in VARIANTS {
            let Some(ms) = series.get(&(c, variant.to_owned())) else { continue };
            let n = ms.len() as f64;
            // A step curve: after the i-th sample, (i+1)/n of the sessions had their prompt.
            let mut points = Vec::with_capacity(ms.len() * 2);
            for (i, x) in ms.iter().enumerate() {
                points.push((*x, i as f64 / n));
                points.push((*x, (i + 1) as f64 / n));
            }
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                .label(format!("{name} (n={})", ms.len()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
