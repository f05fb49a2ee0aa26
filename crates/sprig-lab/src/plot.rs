//! One line-chart shape for the lab's figures (plotters, SVG in a string): a caption, axis labels,
//! grey reference lines, and one coloured line with markers per series.
use anyhow::Result;

/// What to draw.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub x: (f64, f64),
    pub y: (f64, f64),
    /// Thin grey lines with their legend labels (a bar to reach, the diagonal, a dense baseline).
    pub references: Vec<(String, Vec<(f64, f64)>)>,
    pub series: &'a [(String, Vec<(f64, f64)>)],
    /// Markers of series `i` (e.g. every seed around a line of means); by default the line's points.
    pub dots: Vec<Vec<(f64, f64)>>,
    /// Where the legend goes (plotters' position; the lower right by default).
    pub legend_lower_left: bool,
}

impl<'a> Chart<'a> {
    /// A chart of `series` with no reference line, markers on the lines, legend at the lower right.
    pub fn new(title: &'a str, (x_desc, y_desc): (&'a str, &'a str), x: (f64, f64), y: (f64, f64), series: &'a [(String, Vec<(f64, f64)>)]) -> Self {
        Self { title, x_desc, y_desc, x, y, references: vec![], series, dots: vec![], legend_lower_left: false }
    }

    /// Adds a reference line.
    pub fn reference(mut self, label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        self.references.push((label.into(), points));
        self
    }
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
        for (i, (label, pts)) in c.references.iter().enumerate() {
            let g = BLACK.mix(0.5 - 0.15 * (i % 3) as f64);
            chart
                .draw_series(std::iter::once(PathElement::new(pts.clone(), g.stroke_width(1))))
                .map_err(e)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], g.stroke_width(1)));
        }
        for (i, (label, pts)) in c.series.iter().enumerate() {
            let col = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))
                .map_err(e)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
            let dots = c.dots.get(i).filter(|d| !d.is_empty()).unwrap_or(pts);
            chart.draw_series(dots.iter().map(|p| Circle::new(*p, 4, col.filled()))).map_err(e)?;
        }
        let pos = if c.legend_lower_left { SeriesLabelPosition::LowerLeft } else { SeriesLabelPosition::LowerRight };
        chart.configure_series_labels().position(pos).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(svg)
}
