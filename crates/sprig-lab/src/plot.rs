//! One line-chart shape for the lab's figures (plotters, SVG in a string): a caption, axis labels,
//! an optional black reference line, and one coloured line with markers per series.
use anyhow::Result;

/// What to draw.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub x: (f64, f64),
    pub y: (f64, f64),
    /// A thin grey line with its legend label (a bar to reach, the diagonal).
    pub reference: Option<(&'a str, Vec<(f64, f64)>)>,
    pub series: &'a [(String, Vec<(f64, f64)>)],
}

/// The chart as an SVG document.
pub fn line_chart(c: &Chart) -> Result<String> {
    use plotters::prelude::*;
    fn e<E: std::fmt::Display>(e: E) -> anyhow::Error {
        anyhow::anyhow!("drawing the figure: {e}")
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(c.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(c.x.0..c.x.1, c.y.0..c.y.1)
            .map_err(e)?;
        chart.configure_mesh().x_desc(c.x_desc).y_desc(c.y_desc).draw().map_err(e)?;
        if let Some((label, pts)) = &c.reference {
            let g = BLACK.mix(0.5);
            chart
                .draw_series(std::iter::once(PathElement::new(pts.clone(), g.stroke_width(1))))
                .map_err(e)?
                .label(*label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], g.stroke_width(1)));
        }
        for (i, (label, pts)) in c.series.iter().enumerate() {
            let col = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))
                .map_err(e)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, col.filled()))).map_err(e)?;
        }
        chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(svg)
}
