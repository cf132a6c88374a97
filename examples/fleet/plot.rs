//! One SVG per scenario: STS calls per second (all, and throttled) with
//! the quota, over the pods without usable credentials.

use std::path::Path;

use bedrock_broker::fleet::report::{per_second, without_credentials};
use bedrock_broker::fleet::{Outcome, Run};
use plotters::prelude::*;

/// At most this many points per line.
const POINTS: u64 = 1500;

pub fn draw(run: &Run, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let s = &run.scenario;
    let end = s.run_for.as_secs();
    let bin = end.div_ceil(POINTS).max(1);
    let (unit, per_unit) = if end > 6 * 3600 {
        ("hours", 3600.0)
    } else {
        ("minutes", 60.0)
    };
    let x = |i: usize| (i as u64 * bin) as f64 / per_unit;
    let mean = |bins: &[u32]| -> Vec<(f64, f64)> {
        bins.chunks(bin as usize)
            .enumerate()
            .map(|(i, c)| {
                (
                    x(i),
                    c.iter().map(|&v| f64::from(v)).sum::<f64>() / bin as f64,
                )
            })
            .collect()
    };
    let calls = mean(&per_second(run, 0, end, |_| true));
    let throttled = mean(&per_second(run, 0, end, |o| o == Outcome::Throttled));
    let without = without_credentials(run, bin);
    let x_max = end as f64 / per_unit;
    let y_calls = calls.iter().map(|p| p.1).fold(s.quota.per_second, f64::max) * 1.1;
    let y_pods = without
        .iter()
        .map(|w| w.0.max(w.1))
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.1;

    let path = dir.join(format!("{}.svg", s.name));
    let root = SVGBackend::new(&path, (900, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(380);
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("{}: {} pods, STS calls per second", s.name, s.pods),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_calls)?;
    chart
        .configure_mesh()
        .x_desc(unit)
        .y_desc("calls/s")
        .draw()?;
    if let Some(first) = s.faults.first() {
        let shade = RGBColor(255, 215, 215).filled();
        let window = |f: &bedrock_broker::fleet::Fault| {
            let (from, until) = (
                f.from.as_secs_f64() / per_unit,
                f.until.as_secs_f64() / per_unit,
            );
            Rectangle::new([(from, 0.0), (until, y_calls)], shade)
        };
        chart
            .draw_series(s.faults.iter().map(window))?
            .label(format!("STS fault: {:?}", first.kind))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], shade));
    }
    chart
        .draw_series(LineSeries::new(calls, &BLUE))?
        .label("STS calls/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE));
    chart
        .draw_series(LineSeries::new(throttled, &RED))?
        .label("throttled/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    let quota = [(0.0, s.quota.per_second), (x_max, s.quota.per_second)];
    chart
        .draw_series(LineSeries::new(quota, BLACK.stroke_width(1)))?
        .label("quota")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;

    let mut chart = ChartBuilder::on(&bottom)
        .caption("pods without usable credentials", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_pods)?;
    chart.configure_mesh().x_desc(unit).y_desc("pods").draw()?;
    let series = |pick: fn(&(u32, u32)) -> u32| -> Vec<(f64, f64)> {
        without
            .iter()
            .enumerate()
            .map(|(i, w)| (x(i), f64::from(pick(w))))
            .collect()
    };
    chart
        .draw_series(LineSeries::new(series(|w| w.0), &MAGENTA))?
        .label("not ready yet")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], MAGENTA));
    chart
        .draw_series(LineSeries::new(series(|w| w.1), &RED))?
        .label("credentials expired")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}
