//! The sampling rules of `api.md` §4.9, shared by every sequence layout: which points of a series
//! a density `p` keeps, and the same computed from the bounds of a gapless series.

use super::SeqPoint;

/// The bucket of `step` in the `p ≥ 128` rule of [`sample_indices`].
fn bucket(step: i64, first: i64, buckets: usize, span: f64) -> usize {
    ((((step - first) as f64) * buckets as f64 / span) as usize).min(buckets - 1)
}

/// The steps [`sample_indices`] keeps for `p` from the gapless steps `first..=last`, computed
/// without listing them (`first < last`, more steps than `p`).
pub fn sample_gapless(first: i64, last: i64, p: usize) -> Vec<i64> {
    let n = u64::try_from(i128::from(last) - i128::from(first) + 1).unwrap_or(u64::MAX);
    if n <= p as u64 {
        return (first..=last).collect();
    }
    if p <= 1 {
        return vec![first];
    }
    let span = (last - first) as f64;
    if p >= 128 {
        // The first step after `first` in each bucket, found from its estimate by stepping, with
        // the same arithmetic as `sample_indices`.
        let buckets = p - 2;
        let mut out = vec![first];
        for b in 0..buckets {
            let mut s = first.saturating_add((b as f64 * span / buckets as f64).ceil() as i64).clamp(first + 1, last);
            while s > first + 1 && bucket(s - 1, first, buckets, span) >= b {
                s -= 1;
            }
            while s < last && bucket(s, first, buckets, span) < b {
                s += 1;
            }
            if s < last && bucket(s, first, buckets, span) == b && out.last() != Some(&s) {
                out.push(s);
            }
        }
        out.push(last);
        return out;
    }
    let mut out: Vec<i64> = Vec::with_capacity(p);
    for i in 0..p {
        let target = first as f64 + span * i as f64 / (p - 1) as f64;
        // The first step not below the target, as `partition_point` finds it.
        let mut s = (target.ceil() as i64).clamp(first, last);
        while s > first && ((s - 1) as f64) >= target {
            s -= 1;
        }
        while s < last && (s as f64) < target {
            s += 1;
        }
        if out.last() != Some(&s) {
            out.push(s);
        }
    }
    if out.len() < p {
        out = (0..p)
            .map(|i| first + ((i as u128 * u128::from(n - 1)) as f64 / (p - 1) as f64).round_ties_even() as i64)
            .collect();
    }
    out
}

/// Indices of the points kept when sampling ascending `steps` down to at most `p` points, by the
/// reference's rules (`api.md` §4.9): everything when there are at most `p`; one point when `p ≤ 1`
/// or all steps are equal; for `p ≥ 128` the first and last step plus the first step in each of
/// `p − 2` equal-width step buckets between them; below 128, `p` evenly spaced target steps each
/// resolved to the nearest existing step at or after it, falling back to `p` evenly spaced positions
/// when duplicates leave fewer than `p`.
pub fn sample_indices(steps: &[i64], p: usize) -> Vec<usize> {
    let n = steps.len();
    if n <= p {
        return (0..n).collect();
    }
    let (first, last) = (steps[0], steps[n - 1]);
    if p <= 1 || first == last {
        return vec![0];
    }
    let span = (last - first) as f64;
    if p >= 128 {
        let buckets = p - 2;
        let mut out = vec![0];
        let mut seen = vec![false; buckets];
        for (j, s) in steps.iter().enumerate().take(n - 1).skip(1) {
            let b = bucket(*s, first, buckets, span);
            if !seen[b] {
                seen[b] = true;
                out.push(j);
            }
        }
        out.push(n - 1);
        return out;
    }
    let mut out: Vec<usize> = Vec::with_capacity(p);
    for i in 0..p {
        let target = first as f64 + span * i as f64 / (p - 1) as f64;
        let j = steps.partition_point(|s| (*s as f64) < target).min(n - 1);
        if out.last() != Some(&j) {
            out.push(j);
        }
    }
    if out.len() < p {
        out = (0..p).map(|i| ((i * (n - 1)) as f64 / (p - 1) as f64).round_ties_even() as usize).collect();
    }
    out
}

/// The points of a step-sorted series that [`sample_indices`] keeps for `p`, taken out of
/// `points` without copying them.
pub fn sample_points(points: Vec<SeqPoint>, p: usize) -> Vec<SeqPoint> {
    let steps: Vec<i64> = points.iter().map(|p| p.step).collect();
    let keep = sample_indices(&steps, p);
    if keep.len() == points.len() {
        return points;
    }
    let mut all: Vec<Option<SeqPoint>> = points.into_iter().map(Some).collect();
    keep.into_iter().filter_map(|i| all.get_mut(i).and_then(Option::take)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gapless_sampling_keeps_the_steps_sample_indices_keeps() {
        for (first, last) in [(0, 9_999), (3, 1_000), (-50, 77), (0, 129), (10, 140), (0, 1_000_000), (5, 6)] {
            let steps: Vec<i64> = (first..=last).collect();
            for p in [1, 2, 3, 7, 50, 100, 127, 128, 129, 130, 250, 500, 999, 5_000] {
                let want: Vec<i64> = sample_indices(&steps, p).into_iter().map(|i| steps[i]).collect();
                assert_eq!(sample_gapless(first, last, p), want, "{first}..={last}, p = {p}");
            }
        }
    }
}
