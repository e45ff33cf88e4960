//! Envoy's plain `/stats` form (`name: value` lines; a histogram as `P0(nan,v) P25(nan,v) …`),
//! rendered from the OpenMetrics text of the one registry `/stats/prometheus` also encodes,
//! so no metric is defined twice and both views always agree.

use std::collections::BTreeMap;

/// Envoy's quantiles in its `/stats` histogram lines.
const QUANTILES: [(&str, f64); 10] = [
    ("P0", 0.0),
    ("P25", 0.25),
    ("P50", 0.5),
    ("P75", 0.75),
    ("P90", 0.9),
    ("P95", 0.95),
    ("P99", 0.99),
    ("P99.5", 0.995),
    ("P99.9", 0.999),
    ("P100", 1.0),
];

/// A client-supplied filter is compiled with this much memory at most.
const FILTER_SIZE_LIMIT: usize = 1 << 20;
const FILTER_MAX_LEN: usize = 1024;

/// Why a `/stats` request cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("invalid filter regex: {0}")]
    Filter(String),
}

/// Compiles Envoy's `filter=` regex, bounded in size (the admin API is local, but a pattern
/// is still client input).
pub fn filter(pattern: &str) -> Result<regex::Regex, StatsError> {
    if pattern.len() > FILTER_MAX_LEN {
        return Err(StatsError::Filter(format!(
            "longer than {FILTER_MAX_LEN} bytes"
        )));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(FILTER_SIZE_LIMIT)
        .dfa_size_limit(FILTER_SIZE_LIMIT)
        .build()
        .map_err(|e| StatsError::Filter(e.to_string()))
}

#[derive(Default)]
struct Histogram {
    /// Upper bounds (`le`) with their cumulative counts; `+Inf` as infinity.
    buckets: Vec<(f64, f64)>,
    sum: Option<String>,
    count: Option<String>,
}

/// Envoy's plain text of the OpenMetrics `text`: counters and gauges as `name{labels}: value`,
/// then each histogram's quantiles estimated from its buckets (interval values are `nan`:
/// sluice keeps no interval histograms), its `_count` and `_sum` beside. Sorted by name; only
/// names `filter` finds something in.
pub fn render(text: &str, filter: Option<&regex::Regex>) -> String {
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    let mut plain: Vec<(String, String)> = Vec::new();
    let mut histograms: BTreeMap<(String, String), Histogram> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind.trim());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some(sample) = Sample::parse(line) else {
            continue;
        };
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| {
            let f = sample.name.strip_suffix(s)?;
            (types.get(f) == Some(&"histogram")).then_some((f, *s))
        });
        match family {
            Some((f, suffix)) => {
                let (labels, le) = sample.labels_without_le();
                let h = histograms.entry((f.to_owned(), labels)).or_default();
                match suffix {
                    "_bucket" => {
                        let bound = le.and_then(|le| match le {
                            "+Inf" => Some(f64::INFINITY),
                            v => v.parse().ok(),
                        });
                        if let (Some(b), Ok(c)) = (bound, sample.value.parse::<f64>()) {
                            h.buckets.push((b, c));
                        }
                    }
                    "_sum" => h.sum = Some(sample.value.to_owned()),
                    _ => h.count = Some(sample.value.to_owned()),
                }
            }
            None => plain.push((
                format!("{}{}", sample.name, sample.labels),
                number(sample.value),
            )),
        }
    }
    for ((family, labels), h) in &histograms {
        if let Some(c) = &h.count {
            plain.push((format!("{family}_count{labels}"), number(c)));
        }
        if let Some(s) = &h.sum {
            plain.push((format!("{family}_sum{labels}"), number(s)));
        }
    }
    let keep = |name: &str| filter.is_none_or(|f| f.is_match(name));
    plain.retain(|(name, _)| keep(name));
    plain.sort();
    let mut out = String::new();
    for (name, value) in plain {
        out.push_str(&name);
        out.push_str(": ");
        out.push_str(&value);
        out.push('\n');
    }
    for ((family, labels), h) in histograms {
        let name = format!("{family}{labels}");
        if !keep(&name) {
            continue;
        }
        out.push_str(&name);
        out.push_str(": ");
        out.push_str(&quantiles(h.buckets));
        out.push('\n');
    }
    out
}

/// `P0(nan,v) P25(nan,v) …`, or Envoy's `No recorded values`.
fn quantiles(mut buckets: Vec<(f64, f64)>) -> String {
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return "No recorded values".into();
    }
    QUANTILES
        .iter()
        .map(|(label, q)| {
            format!(
                "{label}(nan,{})",
                number(&quantile(&buckets, *q).to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prometheus's `histogram_quantile`: linear within the bucket the rank falls in; the `+Inf`
/// bucket answers the highest finite bound. `q = 0` is the lower bound of the first bucket
/// with a value.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    let highest_finite = buckets
        .iter()
        .rev()
        .map(|b| b.0)
        .find(|b| b.is_finite())
        .unwrap_or(0.0);
    let rank = q * total;
    let (mut lower, mut below) = (0.0_f64, 0.0_f64);
    for &(le, cum) in buckets {
        let reached = if q == 0.0 { cum > 0.0 } else { cum >= rank };
        if reached {
            if !le.is_finite() {
                return highest_finite;
            }
            if q == 0.0 || cum <= below {
                return lower.min(le);
            }
            return lower + (le - lower) * (rank - below) / (cum - below);
        }
        lower = le;
        below = cum;
    }
    highest_finite
}

/// A value as Envoy prints it: integers without a fraction.
fn number(v: &str) -> String {
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{}", f as i64),
        Ok(f) if f.is_finite() => {
            let s = format!("{f:.6}");
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        }
        _ => v.to_owned(),
    }
}

/// One OpenMetrics sample line: `name{labels} value [timestamp] [# exemplar]`.
struct Sample<'a> {
    name: &'a str,
    /// `{…}` as printed (empty when there are none).
    labels: &'a str,
    value: &'a str,
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Option<Sample<'a>> {
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            let close = name_end + labels_end(&line[name_end..])?;
            (&line[name_end..=close], &line[close + 1..])
        } else {
            ("", &line[name_end..])
        };
        let value = rest.split_whitespace().next()?;
        Some(Sample {
            name,
            labels,
            value,
        })
    }

    /// The labels without `le` (a histogram bucket's bound), and that bound.
    fn labels_without_le(&self) -> (String, Option<&'a str>) {
        let inner = self
            .labels
            .strip_prefix('{')
            .and_then(|l| l.strip_suffix('}'))
            .unwrap_or("");
        let mut le = None;
        let kept: Vec<&str> = split_labels(inner)
            .into_iter()
            .filter(|pair| match pair.strip_prefix("le=") {
                Some(v) => {
                    le = Some(v.trim_matches('"'));
                    false
                }
                None => true,
            })
            .collect();
        if kept.is_empty() {
            (String::new(), le)
        } else {
            (format!("{{{}}}", kept.join(",")), le)
        }
    }
}

/// The index of the `}` closing the label set that `s` starts with, quotes respected.
fn labels_end(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// `k="v",k2="v2"` into its pairs, commas inside values respected.
fn split_labels(s: &str) -> Vec<&str> {
    let (mut out, mut start) = (Vec::new(), 0);
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out.into_iter().filter(|p| !p.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP istio_requests Total requests.
# TYPE istio_requests counter
istio_requests_total{response_code="200",response_flags="UF,URX",path="a}b\"c"} 3
# TYPE sluice_config_generation gauge
sluice_config_generation 1
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_sum{response_code="200"} 12.5
istio_request_duration_milliseconds_count{response_code="200"} 4
istio_request_duration_milliseconds_bucket{response_code="200",le="1.0"} 0
istio_request_duration_milliseconds_bucket{response_code="200",le="5.0"} 2
istio_request_duration_milliseconds_bucket{response_code="200",le="10.0"} 4
istio_request_duration_milliseconds_bucket{response_code="200",le="+Inf"} 4
# TYPE empty histogram
empty_sum 0.0
empty_count 0
empty_bucket{le="+Inf"} 0
# EOF
"#;

    #[test]
    fn counters_gauges_and_histograms_in_envoy_form() {
        let out = render(TEXT, None);
        assert!(
            out.contains(
                "istio_requests_total{response_code=\"200\",response_flags=\"UF,URX\",path=\"a}b\\\"c\"}: 3\n"
            ),
            "{out}"
        );
        assert!(out.contains("sluice_config_generation: 1\n"), "{out}");
        assert!(
            out.contains("istio_request_duration_milliseconds_count{response_code=\"200\"}: 4\n"),
            "{out}"
        );
        assert!(
            out.contains("istio_request_duration_milliseconds_sum{response_code=\"200\"}: 12.5\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "istio_request_duration_milliseconds{response_code=\"200\"}: P0(nan,1) P25(nan,3) P50(nan,5) P75(nan,7.5)"
            ),
            "{out}"
        );
        assert!(out.contains("P100(nan,10)\n"), "{out}");
        assert!(out.contains("empty: No recorded values\n"), "{out}");
    }

    #[test]
    fn the_filter_keeps_matching_names() {
        let f = filter("config_gen").expect("regex");
        assert_eq!(render(TEXT, Some(&f)), "sluice_config_generation: 1\n");
        assert!(filter("(").is_err());
        assert!(filter(&"a".repeat(2000)).is_err());
    }

    #[test]
    fn the_inf_bucket_answers_the_highest_bound() {
        let b = [(1.0, 0.0), (5.0, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(&b, 0.99), 5.0);
        assert_eq!(quantile(&b, 0.0), 1.0);
    }
}
