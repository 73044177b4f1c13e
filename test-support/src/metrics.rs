//! Reading `GET /metrics` in tests: a scrape parsed into `name{labels}` to value, with every
//! sample line's shape checked, and how much a series grew between two scrapes. Every test of
//! a binary records into the one process-wide recorder, so tests compare a scrape before with
//! one after and ask for at least their own share.

use std::collections::HashMap;

/// A scrape: `name{labels}` to value, after checking every sample line's shape.
pub fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("value of {line:?} is not a float: {e}"));
        let name = series.split_once('{').map_or(series, |(name, labels)| {
            assert!(labels.ends_with('}'), "labels not closed: {line:?}");
            name
        });
        assert!(
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// The text and the samples of the answer to an authorised `GET /metrics`, after checking
/// that it is a 200 in the Prometheus text format.
pub async fn read_scrape(response: reqwest::Response) -> (String, HashMap<String, f64>) {
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

/// How much `series` grew from `before` to `after` (absent counts as 0).
pub fn growth(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

/// Checks that each `(series, at_least)` grew by at least `at_least` from `before` to
/// `after`; `text` (the later scrape) is shown when one did not.
pub fn assert_grew(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    text: &str,
    expected: &[(&str, f64)],
) {
    for &(series, at_least) in expected {
        let grew = growth(before, after, series);
        assert!(grew >= at_least, "{series} grew by {grew}:\n{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_is_parsed_by_series() {
        let text = "# HELP x_total x\n# TYPE x_total counter\nx_total{a=\"b\"} 3\ny 1.5\n";
        let samples = parse(text);
        assert_eq!(samples[r#"x_total{a="b"}"#], 3.0);
        assert_eq!(samples["y"], 1.5);
        let before = HashMap::from([("y".to_owned(), 1.0)]);
        assert_eq!(growth(&before, &samples, "y"), 0.5);
        assert_eq!(growth(&before, &samples, r#"x_total{a="b"}"#), 3.0);
        assert_grew(&before, &samples, text, &[("y", 0.5)]);
    }

    #[test]
    #[should_panic(expected = "grew by")]
    fn a_series_that_did_not_grow_enough_fails() {
        let samples = parse("y 1\n");
        assert_grew(&samples, &samples, "y 1", &[("y", 1.0)]);
    }

    #[test]
    #[should_panic(expected = "bad metric name")]
    fn a_malformed_name_fails() {
        parse("1abc 2\n");
    }
}
