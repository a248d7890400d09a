//! Percentiles across citizens: per bucket, each citizen's mean counts once, however many
//! readings or devices they have, and the percentile is taken of those means.

/// The `p`th percentile (1 to 99) of `values`, interpolated linearly between the two nearest
/// ranks (R's type 7, NumPy's default); `None` for no values. Sorts `values`.
pub fn percentile(values: &mut [f64], p: u8) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = f64::from(p) / 100.0 * (values.len() - 1) as f64;
    let (below, above) = (rank.floor() as usize, rank.ceil() as usize);
    let weight = rank - below as f64;
    Some(values[below] + (values[above] - values[below]) * weight)
}

/// Folds (bucket, a citizen's mean) pairs, ordered by bucket, into one (bucket, `p`th
/// percentile of the means) per bucket.
pub fn by_bucket(means: impl IntoIterator<Item = (i64, f64)>, p: u8) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    let mut current: Option<i64> = None;
    let mut values = Vec::new();
    let mut close = |bucket: Option<i64>, values: &mut Vec<f64>| {
        if let (Some(bucket), Some(value)) = (bucket, percentile(values, p)) {
            out.push((bucket, value));
        }
        values.clear();
    };
    for (bucket, mean) in means {
        if current != Some(bucket) {
            close(current, &mut values);
            current = Some(bucket);
        }
        values.push(mean);
    }
    close(current, &mut values);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let mut v = [40.0, 10.0, 30.0, 20.0];
        assert_eq!(percentile(&mut v, 50), Some(25.0));
        // Ranks 0.03 and 2.97 of 0..=3.
        let near = |got: Option<f64>, want: f64| got.is_some_and(|g| (g - want).abs() < 1e-9);
        assert!(near(percentile(&mut v, 1), 10.3));
        assert!(near(percentile(&mut v, 99), 39.7));
        assert_eq!(percentile(&mut [7.0], 90), Some(7.0));
        assert_eq!(percentile(&mut [], 50), None);
        let mut hundred: Vec<f64> = (1..=101).map(f64::from).collect();
        assert_eq!(percentile(&mut hundred, 90), Some(91.0));
    }

    #[test]
    fn one_percentile_per_bucket_in_order() {
        let means = [
            (0, 1.0),
            (0, 3.0),
            (0, 2.0),
            (60, 10.0),
            (120, 5.0),
            (120, 7.0),
        ];
        assert_eq!(by_bucket(means, 50), [(0, 2.0), (60, 10.0), (120, 6.0)]);
        assert!(by_bucket([], 50).is_empty());
    }
}
