//! The one writer of the Prometheus text exposition format (version 0.0.4), used by every metric of the
//! server ([`crate::metrics`], [`crate::process`], the replication roles).
//!
//! A family is its `# HELP` and `# TYPE` lines followed by its samples; a sample is
//! `name{label="value",...} value`, without braces when it has no labels. Label values are escaped as
//! the format requires (`\` as `\\`, `"` as `\"`, a newline as `\n`). A histogram's buckets are written
//! cumulative, ending in `le="+Inf"`, then `_sum` and `_count`. Values are written with `Display`, so an
//! integer stays exact and an `f64` prints as Rust prints it (`5`, `0.25`).

use std::fmt::{Display, Write as _};

/// A family's `# TYPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; its name ends in `_total` (promtool checks the convention).
    Counter,
    /// Any value.
    Gauge,
    /// Bucketed observations.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Text being written.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
}

/// Appends `{a="x",b="y"}` (or nothing for no labels), with `extra` (such as `le`) last.
fn write_labels(out: &mut String, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    for (i, (name, value)) in labels.iter().chain(extra.as_ref()).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

impl Writer {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
        self
    }

    /// One sample of the current family.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Self {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A family of one unlabelled counter.
    pub fn counter(&mut self, name: &str, help: &str, value: impl Display) -> &mut Self {
        self.family(name, Kind::Counter, help)
            .sample(name, &[], value)
    }

    /// A family of one unlabelled gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Display) -> &mut Self {
        self.family(name, Kind::Gauge, help)
            .sample(name, &[], value)
    }

    /// One series of the current histogram family: `counts[i]` observations fell in bucket `i` (at most
    /// `bounds[i]`, above the previous bound; not cumulative), `count` in all (the `+Inf` bucket), `sum`
    /// their total.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[impl Display],
        counts: &[u64],
        sum: impl Display,
        count: u64,
    ) -> &mut Self {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += counts.get(i).copied().unwrap_or(0);
            self.out.push_str(&bucket);
            write_labels(&mut self.out, labels, Some(("le", &bound.to_string())));
            let _ = writeln!(self.out, " {cumulative}");
        }
        self.out.push_str(&bucket);
        write_labels(&mut self.out, labels, Some(("le", "+Inf")));
        let _ = writeln!(self.out, " {count}");
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count)
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut w = Writer::new();
        w.counter("a_total", "An a.", 3u64);
        w.family("b", Kind::Gauge, "A b.")
            .sample("b", &[("x", "q\"\\\n")], 0.5)
            .sample("b", &[("x", "1"), ("y", "2")], 5.0);
        let text = w.finish();
        assert_eq!(
            text,
            "# HELP a_total An a.\n# TYPE a_total counter\na_total 3\n\
             # HELP b A b.\n# TYPE b gauge\nb{x=\"q\\\"\\\\\\n\"} 0.5\nb{x=\"1\",y=\"2\"} 5\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_and_end_in_inf() {
        let mut w = Writer::new();
        w.family("h", Kind::Histogram, "An h.");
        w.histogram("h", &[("r", "/x")], &[0.5, 1.0], &[1, 2, 4], 9.5, 7);
        w.histogram("h", &[], &[1u64], &[2], 2, 2);
        assert_eq!(
            w.finish(),
            "# HELP h An h.\n# TYPE h histogram\n\
             h_bucket{r=\"/x\",le=\"0.5\"} 1\nh_bucket{r=\"/x\",le=\"1\"} 3\nh_bucket{r=\"/x\",le=\"+Inf\"} 7\n\
             h_sum{r=\"/x\"} 9.5\nh_count{r=\"/x\"} 7\n\
             h_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 2\nh_sum 2\nh_count 2\n"
        );
    }
}
